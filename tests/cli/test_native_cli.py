"""`adamoe finetune --task wikitext` on a Llama (upcycled, `--top-k`) and a Mixtral (its own 8 experts kept), then
`adamoe evaluate` on their checkpoints: tiny models built from configs around the smoke kit's tokenizer and data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny_run import write_decoder_folder
from transformers import AutoTokenizer
from typer.testing import CliRunner

from adamoe.cli import app
from adamoe.smoke import one_thread, write_smoke_task


@pytest.fixture(scope="module")
def wikitext(tmp_path_factory: pytest.TempPathFactory):
    return write_smoke_task("wikitext", tmp_path_factory.mktemp("wikitext"))


def _run(*args: str) -> str:
    with one_thread():
        result = CliRunner().invoke(app, list(args), terminal_width=200)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_decoders_of_today_fine_tune_and_evaluate(family: str, wikitext, tmp_path: Path) -> None:
    folder = write_decoder_folder(family, wikitext.model_dir, tmp_path / family)
    flags = ["--num-experts", "4", "--top-k", "2"] if family == "llama" else []
    overlay = wikitext.overlay()
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"task": "wikitext", "data": overlay["data"], "training": overlay["training"]}))
    out = tmp_path / "out"
    _run("finetune", "--config", str(run), "--model", str(folder), "--threshold", "0.1", *flags, "-o", str(out))

    results = json.loads((out / "results.json").read_text())
    # Untrained, the perplexity is about the vocabulary size (~400); 30 steps on the kit's templated text bring
    # these models to about 41 (the kit's GPT-2, with learnt positions, to under 30).
    assert results["metrics"]["perplexity"] < 60
    assert len(AutoTokenizer.from_pretrained(folder)) > 300
    assert results["moe"]["num_experts"] == (4 if family == "llama" else 8)
    assert results["moe"]["top_k"] == 2
    assert 0.0 < results["two_expert_fraction"] < 1.0  # adaptive: some tokens on one expert, some on two

    _run(
        "evaluate", "--task", "wikitext", "--checkpoint", str(out), "--validation-file", str(wikitext.validation_file)
    )
    evaluated = json.loads((out / "eval" / "eval_results.json").read_text())
    assert evaluated["perplexity"] == pytest.approx(results["metrics"]["perplexity"], rel=1e-4)
