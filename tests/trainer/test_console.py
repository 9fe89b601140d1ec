"""The console shows one compact line per logging step; the full logs (per-layer figures) go to
`trainer_log.jsonl` and to the reporters (`--report-to tensorboard`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_run import write_model_folder, write_sst2
from transformers import TrainerState
from typer.testing import CliRunner

from adamoe.cli import app
from adamoe.trainer.console import console_line


def test_a_training_log_becomes_one_line() -> None:
    state = TrainerState(global_step=50, max_steps=200, epoch=0.5)
    logs = {
        "loss": 0.61234, "task_loss": 0.6, "balance_loss": 0.01234, "two_expert_fraction": 0.2812,
        "two_expert_fraction/bert.encoder.layer.0": 0.3, "learning_rate": 3e-5, "epoch": 0.5, "grad_norm": 1.0,
    }  # fmt: skip
    line = (
        "step 50/200 | epoch 0.50 | loss 0.6123 (task 0.6000 + balance 0.0123) | two experts 28.1% | "
        "3,910 tokens/s | lr 3.00e-05"
    )
    assert console_line(logs, state, 3910.4) == line
    # With include_num_input_tokens_seen every training log also carries the clock: still a step line.
    assert console_line({**logs, "train_runtime": 4.0, "num_input_tokens_seen": 900}, state, 3910.4) == line
    end = {"train_runtime": 12.34, "train_loss": 0.5, "train_samples_per_second": 3.0}
    assert console_line(end, state) == "trained 50 steps in 12.3 s, mean loss 0.5000"


def _run(tmp_path: Path, *flags: str) -> tuple[str, Path]:
    model = write_model_folder(tmp_path / "model")
    config = tmp_path / "run.yaml"
    config.write_text("task: sst2\ntraining:\n  logging_steps: 1\n  disable_tqdm: true\n")
    out = tmp_path / "run"
    args = [
        *("finetune", "--config", str(config), "--model", str(model), "--num-experts", "4", "--batch-size", "4"),
        *("--train-file", str(write_sst2(tmp_path / "train.tsv", 8)), "--epochs", "1"),
        *("--validation-file", str(write_sst2(tmp_path / "dev.tsv", 4, seed=1)), "--output-dir", str(out), *flags),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output, out


def test_the_console_gets_one_line_per_step_and_the_log_file_everything(tmp_path: Path) -> None:
    output, out = _run(tmp_path)
    steps = [line for line in output.splitlines() if line.startswith("step ")]
    assert [line.split(" |")[0] for line in steps] == ["step 1/2", "step 2/2"]
    assert "two_expert_fraction/" not in output and "{'" not in output
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    training = [r for r in records if "loss" in r]
    assert [r["step"] for r in training] == [1, 2]
    assert all(any(k.startswith("two_expert_fraction/") for k in r) for r in training)


def test_report_to_tensorboard_receives_the_per_layer_figures(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out = _run(tmp_path, "--report-to", "tensorboard")
    (events,) = {p.parent for p in (out / "runs").rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    assert "train/two_expert_fraction" in tags and "train/balance_loss" in tags
    assert any(t.startswith("train/two_expert_fraction/") for t in tags)
    assert len(accumulator.Scalars("train/task_loss")) == 2
