"""The model card a run leaves: Hub metadata that huggingface_hub reads back, the results it reached, and how
to load the experts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from tiny_run import write_model_folder, write_sst2
from typer.testing import CliRunner

import adamoe
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


def test_a_pushed_run_is_on_the_hub_and_its_card_loads_it_from_there(fake_hub, tmp_path: Path) -> None:
    # `adamoe finetune --push-to-hub` against a local server that speaks the Hub's API (`hub_server.py`).
    model = write_model_folder(tmp_path / "model")
    out = tmp_path / "run"
    args = [
        *("finetune", "--task", "sst2", "--model", str(model), "--num-experts", "4", "--max-steps", "1"),
        *("--train-file", str(write_sst2(tmp_path / "train.tsv", 8)), "--batch-size", "4"),
        *("--validation-file", str(write_sst2(tmp_path / "dev.tsv", 4, seed=1)), "--output-dir", str(out)),
        *("--push-to-hub", "--hub-model-id", "someone/sst2-moe"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert not fake_hub.unknown, fake_hub.unknown

    hub = fake_hub.files("someone/sst2-moe")
    for name in ("model.safetensors", "config.json", "results.json", "README.md", "tokenizer.json"):
        assert hub[name] == (out / name).read_bytes(), name  # what the run saved last, byte for byte
    assert not [name for name in hub if name.startswith(("checkpoint-", "_"))]
    # The run's lock and its holder's pid were in the folder at every push; like the rest of adamoe's bookkeeping
    # (tests/trainer/test_atomic_save.py plants all of it), they describe this machine's run, not the model.
    private = [name for name in hub if name.startswith((".adamoe", ".checkpoint-")) or name.endswith(".tmp")]
    assert not private, sorted(hub)
    assert json.loads(hub["results.json"])["global_steps"] == 1
    assert list(fake_hub.repos["someone/sst2-moe"].messages.values())[-1] == "adamoe: model card and results"
    card = ModelCard(hub["README.md"].decode())  # adamoe's card, not the stock one an earlier push carried
    assert card.data.library_name == "adamoe" and "4 experts with adaptive gating" in card.text

    # The card's snippet, run as a reader would: a fresh interpreter that knows the Hub only by HF_ENDPOINT,
    # with an empty cache, in a folder without a model in it.
    (snippet,) = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    assert 'adamoe.from_pretrained("someone/sst2-moe")' in snippet
    ids = torch.tensor([[2, 5, 17, 22, 3]])  # [CLS] good film was [SEP]
    script = snippet + f"import torch\ntorch.save(model(input_ids=torch.tensor({ids.tolist()})).logits, 'logits.pt')\n"
    env = {**os.environ, "HF_HOME": str(tmp_path / "reader_home")}
    downloads_before = len(fake_hub.requests)
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True, timeout=300)
    fetched = [path for method, path in fake_hub.requests[downloads_before:] if method == "GET"]
    assert any(path.endswith("/model.safetensors") for path in fetched), fetched
    saved = adamoe.from_pretrained(str(out))
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), saved(input_ids=ids).logits, rtol=0, atol=0)


def test_the_cards_snippet_loads_the_saved_model_dense_or_moe(tmp_path: Path) -> None:
    # A local run's card names the folder the model was saved in; a dense model loads with its transformers
    # class (adamoe.from_pretrained would ask for a MoE config), an adamoe one with adamoe.
    from adamoe.run.model_card import write_model_card
    from adamoe.tasks import get_task

    dense = write_model_folder(tmp_path / "dense")
    moe = adamoe.from_pretrained(str(dense), moe=adamoe.MoEConfig(num_experts=2))
    moe.save_pretrained(tmp_path / "moe")
    for folder, stored in ((dense, None), (tmp_path / "moe", adamoe.moe_config_of(moe).to_dict())):
        results = {"model": "bert-base-uncased", "gating": "dense" if stored is None else stored["gating"],
                   "metrics": {"accuracy": 0.5}, "moe": stored, "checkpoint": str(folder)}  # fmt: skip
        card = ModelCard.load(write_model_card(folder, results, get_task("sst2"), {}))
        (snippet,) = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
        assert json.dumps(str(folder)) in snippet
        namespace: dict = {}
        exec(snippet, namespace)
        loaded = namespace["model"]
        assert type(loaded).__name__ == "BertForSequenceClassification"
        assert adamoe.is_moe_model(loaded) == (stored is not None)
