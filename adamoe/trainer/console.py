"""What a training run shows: one compact line per logging step on the console, everything in a JSON-lines log.

The stock progress callbacks print every log as a Python dict; with adamoe's routing figures (per layer, per
expert) that is a 19-key dict wrapping over six lines per step. The console gets one line of the figures a user
watches (loss and its task and balance parts, the two-expert share, throughput); the full logs still reach every
reporter (`report_to`: TensorBoard, W&B, ...) unchanged, and `trainer_log.jsonl` in the output folder.
"""

from __future__ import annotations

import json
import os
from typing import Any

from transformers import PrinterCallback, ProgressCallback, TrainerCallback, TrainerControl, TrainerState
from transformers import TrainingArguments as HFTrainingArguments

from .timing import TimingCallback

LOG_NAME = "trainer_log.jsonl"


def console_line(logs: dict[str, Any], state: TrainerState, tokens_per_second: float | None = None) -> str:
    """One line for one log: a training step, the end of training, an evaluation, or anything else."""
    # A training log can carry train_runtime too (with include_num_input_tokens_seen); only the end has train_loss.
    if "train_runtime" in logs and "loss" not in logs:
        loss = logs.get("train_loss")
        return f"trained {state.global_step} steps in {logs['train_runtime']:.1f} s" + (
            f", mean loss {loss:.4f}" if loss is not None else ""
        )
    if "loss" in logs:
        parts = [f"step {state.global_step}/{state.max_steps}", f"epoch {logs.get('epoch', state.epoch or 0):.2f}"]
        loss = f"loss {logs['loss']:.4f}"
        if "balance_loss" in logs:
            loss += f" (task {logs['task_loss']:.4f} + balance {logs['balance_loss']:.4f})"
        parts.append(loss)
        if logs.get("two_expert_fraction") is not None:
            parts.append(f"two experts {logs['two_expert_fraction']:.1%}")
        if tokens_per_second:
            parts.append(f"{tokens_per_second:,.0f} tokens/s")
        if "learning_rate" in logs:
            parts.append(f"lr {logs['learning_rate']:.2e}")
        return " | ".join(parts)
    shown = {k: v for k, v in logs.items() if "/" not in k and k != "total_flos"}
    return " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())


class _CompactLog:
    """`on_log` for both console callbacks: `console_line` to `self._write`, by the main process only."""

    timing: TimingCallback

    def _write(self, line: str) -> None:
        raise NotImplementedError

    def on_log(
        self,
        args: HFTrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if state.is_world_process_zero and logs:
            self._write(console_line(logs, state, _throughput(self.timing)))


class CompactProgressCallback(_CompactLog, ProgressCallback):
    """The stock progress bar, with `console_line` instead of the log dict beside it."""

    def __init__(self, timing: TimingCallback, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timing = timing

    def _write(self, line: str) -> None:
        if self.training_bar is not None:
            self.training_bar.write(line)


class CompactPrinterCallback(_CompactLog, PrinterCallback):
    """`disable_tqdm=True`: the same line, printed."""

    def __init__(self, timing: TimingCallback) -> None:
        self.timing = timing

    def _write(self, line: str) -> None:
        print(line)


class JsonLinesLogCallback(TrainerCallback):
    """Every log, per-layer figures included, as one JSON object per line in `output_dir/trainer_log.jsonl`."""

    def on_log(
        self,
        args: HFTrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs or not os.path.isdir(args.output_dir):
            return
        record = {"step": state.global_step, **logs}
        with open(os.path.join(args.output_dir, LOG_NAME), "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")


def _throughput(timing: TimingCallback) -> float | None:
    elapsed = timing.elapsed_s()
    return timing.num_tokens / elapsed if elapsed and elapsed > 0 else None
