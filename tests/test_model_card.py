"""The model card a run leaves: Hub metadata that huggingface_hub reads back, the results it reached, and how
to load the experts."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import ModelCard
from tiny_run import write_model_folder, write_sst2
from typer.testing import CliRunner

from adamoe.cli import app


def test_a_run_carries_a_model_card_with_its_results(tmp_path: Path) -> None:
    model = write_model_folder(tmp_path / "model")
    out = tmp_path / "run"
    args = [
        *("finetune", "--task", "sst2", "--model", str(model), "--num-experts", "4", "--max-steps", "2"),
        *("--train-file", str(write_sst2(tmp_path / "train.tsv", 8)), "--batch-size", "4"),
        *("--validation-file", str(write_sst2(tmp_path / "dev.tsv", 6, seed=1)), "--output-dir", str(out)),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "adamoe"
    assert {"mixture-of-experts", "adaptive-gating"} <= set(card.data.tags)
    assert card.data.base_model is None  # a local folder is not a Hub id
    (reported,) = [r for r in card.data.eval_results if r.metric_type == "accuracy"]
    assert reported.metric_value == round(results["metrics"]["accuracy"], 4)
    assert reported.task_type == "text-classification"
    assert "4 experts with adaptive gating" in card.text and "T = 0.1" in card.text
    assert "adamoe.from_pretrained" in card.text
