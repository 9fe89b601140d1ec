"""`adamoe evaluate` with routing overrides: the same weights, routed another way, without touching the run."""

from __future__ import annotations

import json
from pathlib import Path

from tiny_run import write_model_folder, write_sst2
from typer.testing import CliRunner

from adamoe.cli import app


def test_evaluate_routes_the_same_weights_another_way(tmp_path: Path) -> None:
    model = write_model_folder(tmp_path / "model")
    dev = write_sst2(tmp_path / "dev.tsv", 16, seed=1)
    out = tmp_path / "run"
    args = [
        *("finetune", "--task", "sst2", "--model", str(model), "--num-experts", "4", "--threshold", "0.05"),
        *("--expert-init", "random"),  # upcycled experts are copies: any routing would give the same output
        *("--train-file", str(write_sst2(tmp_path / "train.tsv", 8)), "--validation-file", str(dev)),
        *("--max-steps", "2", "--batch-size", "4", "--output-dir", str(out)),
    ]
    assert CliRunner().invoke(app, args).exit_code == 0
    config_before = (out / "config.json").read_bytes()

    def evaluate(name: str, *routing: str) -> dict:
        folder = tmp_path / name
        command = ["evaluate", "--task", "sst2", "--checkpoint", str(out), "--validation-file", str(dev), "-o"]
        result = CliRunner().invoke(app, [*command, str(folder), *routing])
        assert result.exit_code == 0, result.output
        return json.loads((folder / "eval_results.json").read_text())

    own, top2, all_unsure = evaluate("own"), evaluate("top2", "--gating", "top2"), evaluate("t1", "--threshold", "1")
    # T = 1 sends every token to top_k = 2 experts: exactly fixed top-2 (an independent path through the router).
    assert top2["loss"] == all_unsure["loss"]
    assert own["loss"] != top2["loss"]  # at T = 0.05 most tokens take one expert
    assert (out / "config.json").read_bytes() == config_before  # the run's own routing is untouched
