"""`adamoe finetune --resume` after a SIGKILL mid-epoch continues exactly where the last checkpoint left off.

Three runs of the real CLI, each in its own process: one uninterrupted, one killed as optimizer step 11 (of 12)
begins, and the killed one resumed from its last checkpoint (step 8, mid-way through epoch 1, whose order is the
curriculum's). The resumed run must train the same batches in the same order, with the same optimizer,
scheduler, RNG (dropout is on), curriculum and routing-rule state (a steered threshold), so it ends at the same
step with the same weights and loss.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny_run import write_model_folder, write_sst2

DRIVER = Path(__file__).with_name("finetune_driver.py")
STEPS_PER_EPOCH, EPOCHS, SAVE_STEPS, KILL_AT = 6, 2, 4, 10  # 24 samples, batch 4


def _run_config(tmp_path: Path, name: str) -> Path:
    model = write_model_folder(tmp_path / "model") if not (tmp_path / "model").exists() else tmp_path / "model"
    train = tmp_path / "train.tsv"
    if not train.exists():
        write_sst2(train, 4 * STEPS_PER_EPOCH, seed=0)
        write_sst2(tmp_path / "dev.tsv", 10, seed=1)
    config = {
        "task": "sst2",
        "model": str(model),
        # A steered threshold: the controller's state must come back from the checkpoint like the weights.
        "moe": {
            "num_experts": 4,
            "threshold": 0.2,
            "target_experts": 1.5,
            "router_init_std": 1.0,
            "expert_init": "random",
        },  # fmt: skip
        "data": {"train_file": str(train), "validation_file": str(tmp_path / "dev.tsv")},
        "training": {
            "num_train_epochs": EPOCHS,
            "per_device_train_batch_size": 4,
            "learning_rate": 1e-3,
            "save_strategy": "steps",
            "save_steps": SAVE_STEPS,
            "logging_steps": 1,
            "curriculum": True,
            "seed": 0,
            "use_cpu": True,
            "disable_tqdm": True,
        },
        "output_dir": str(tmp_path / name),
        "keep_checkpoints": True,  # the test compares the checkpoints' trainer state
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start(config: Path, log: Path, *flags: str, kill_at: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "ADAMOE_TEST_ORDER_LOG": str(log), "PYTHONPATH": str(DRIVER.parents[1])}
    if kill_at is not None:
        env["ADAMOE_TEST_KILL_AT"] = str(kill_at)
    command = [sys.executable, str(DRIVER), "finetune", "--config", str(config), *flags]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"finetune did not finish in 240 s:\n{output[-3000:]}")
    return process.returncode, output


def _batches(log: Path) -> dict[int, list[int]]:
    """Optimizer step -> the sample indices it trained on."""
    return {step: indices for step, indices in map(json.loads, log.read_text().splitlines())}


def _final_train_loss(folder: Path) -> tuple[int, float]:
    history = json.loads((folder / f"checkpoint-{EPOCHS * STEPS_PER_EPOCH}" / "trainer_state.json").read_text())
    step, loss = next((e["step"], e["loss"]) for e in reversed(history["log_history"]) if "loss" in e)
    return step, loss


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    full_config, crash_config = _run_config(tmp_path, "full"), _run_config(tmp_path, "crash")
    full_log, crash_log, resume_log = tmp_path / "full.jsonl", tmp_path / "crash.jsonl", tmp_path / "resume.jsonl"
    full, crash = _start(full_config, full_log), _start(crash_config, crash_log, kill_at=KILL_AT)
    (full_code, full_output), (crash_code, _) = _finish(full), _finish(crash)
    assert full_code == 0, full_output[-3000:]
    assert crash_code == -signal.SIGKILL
    crashed = tmp_path / "crash"
    assert sorted(p.name for p in crashed.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    assert not (crashed / "results.json").exists()

    resumed_code, resumed_output = _finish(_start(crash_config, resume_log, "--resume"))
    assert resumed_code == 0, resumed_output[-3000:]

    # The same batches in the same order: steps 1-10 before the crash, 9-12 (from checkpoint-8) after it.
    full_batches, crash_batches, resumed_batches = _batches(full_log), _batches(crash_log), _batches(resume_log)
    total = EPOCHS * STEPS_PER_EPOCH
    assert sorted(full_batches) == list(range(1, total + 1))
    assert crash_batches == {s: full_batches[s] for s in range(1, KILL_AT + 1)}
    assert resumed_batches == {s: full_batches[s] for s in range(2 * SAVE_STEPS + 1, total + 1)}
    # Epoch 1 follows the curriculum (from the checkpoint's complexity vectors), not the seeded random order.
    epoch1 = [i for s in range(STEPS_PER_EPOCH + 1, total + 1) for i in full_batches[s]]
    assert sorted(epoch1) == list(range(24))
    assert epoch1 != torch.randperm(24, generator=torch.Generator().manual_seed(0 + 1)).tolist()

    full_results = json.loads((tmp_path / "full" / "results.json").read_text())
    resumed_results = json.loads((crashed / "results.json").read_text())
    assert full_results["global_steps"] == resumed_results["global_steps"] == total
    # The resumed run's train_loss covers all its steps, not only the four it trained after the crash.
    assert resumed_results["train_loss"] == pytest.approx(full_results["train_loss"], rel=1e-4)
    full_step, full_loss = _final_train_loss(tmp_path / "full")
    resumed_step, resumed_loss = _final_train_loss(crashed)
    assert full_step == resumed_step == total
    assert resumed_loss == pytest.approx(full_loss, rel=1e-4, abs=1e-6)
    assert resumed_results["metrics"]["loss"] == pytest.approx(full_results["metrics"]["loss"], rel=1e-5)
    full_weights, resumed_weights = (
        load_file(tmp_path / "full" / "model.safetensors"),
        load_file(crashed / "model.safetensors"),
    )
    assert full_weights.keys() == resumed_weights.keys()
    assert any(k.endswith("router.controller") for k in full_weights)
    worst = max(float((full_weights[k] - resumed_weights[k]).abs().max()) for k in full_weights)
    assert worst < 1e-5
