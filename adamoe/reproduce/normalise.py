"""Training time normalised to a reference cell, measured to a common target loss (the paper's "Norm. Training
Time": "all the schemes in the same task converge to the same loss").

Rule, for the cells of one task in one run set (e.g. the four schemes of a Table 3 row):

1. Each cell's logged training (task) losses are smoothed with the bias-corrected EMA the trainer's timing
   callback uses (`LossSmoother`, with the run's `target_loss_smoothing`).
2. The target is the *worst* final smoothed loss among the cells, so every cell reaches it, the slowest one at
   its last logging event. (Picking top-2's final loss instead would leave cells that never reach it without a
   time.)
3. A cell's time to target is the training clock at its first logging event whose smoothed loss is at or below
   the target, the same stamp `TimingCallback` puts on `time_to_target_s`.
4. Normalised time = the cell's time to target / the reference cell's (top-2 for Tables 3 and 5).

The curves come from each run's log history (`loss_curve`), with the wall-clock of every logging event when
the trainer recorded it (`train_runtime`), else step-proportional times from the run's total training time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..trainer.console import LOG_NAME
from ..trainer.timing import LossSmoother

CurvePoint = dict[str, float]  # {"step", "time_s", "task_loss"}


def loss_curve(run_dir: str | Path, train_time_s: float | None = None) -> tuple[list[CurvePoint], str]:
    """The logged training losses of the run in `run_dir`, read from its `trainer_log.jsonl` (or, for a run
    written before that log existed, its last checkpoint's `trainer_state.json`).

    Returns:
        `(points, clock)`: one point per training log event, and "train_runtime" when the times are the
        trainer's wall clock at each event, "step_interpolated" when they are `train_time_s * step / last_step`,
        or "none" when the run left no log history.
    """
    log = Path(run_dir) / LOG_NAME
    states = sorted(
        Path(run_dir).glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1])
    )
    if log.is_file():
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        # A resumed run logs the steps after its checkpoint again: the later record of a step is the one kept.
        history = list({(r.get("step"), "loss" in r or "task_loss" in r): r for r in records}.values())
    elif states:
        history = json.loads(states[-1].read_text()).get("log_history", [])
    else:
        return [], "none"
    events = [e for e in history if "task_loss" in e or ("loss" in e and "eval_loss" not in e)]
    if not events:
        return [], "none"
    if all("train_runtime" in e for e in events):
        times, clock = [float(e["train_runtime"]) for e in events], "train_runtime"
    else:
        last_step = max(int(e["step"]) for e in events)
        total = float(train_time_s or 0.0)
        times, clock = [total * int(e["step"]) / max(last_step, 1) for e in events], "step_interpolated"
    points = [
        {"step": int(e["step"]), "time_s": t, "task_loss": float(e.get("task_loss", e.get("loss")))}
        for e, t in zip(events, times, strict=True)
    ]
    if all("train_cpu_s" in e for e in events):  # the trainer's process CPU seconds at each event
        for point, event in zip(points, events, strict=True):
            point["cpu_s"] = float(event["train_cpu_s"])
    return points, clock


def smoothed(losses: Sequence[float], smoothing: float) -> list[float]:
    """The smoothed loss after each logged loss, as `TimingCallback` computes it."""
    smoother = LossSmoother(smoothing)
    return [smoother.update(loss) for loss in losses]


def final_smoothed_loss(curve: Sequence[CurvePoint], smoothing: float) -> float | None:
    values = smoothed([p["task_loss"] for p in curve], smoothing)
    return values[-1] if values else None


def time_to_target(
    curve: Sequence[CurvePoint], target: float, smoothing: float, clock: str = "time_s"
) -> float | None:
    """The time (`clock`: "time_s", wall, or "cpu_s", process CPU) of the first logging event whose smoothed loss
    is <= `target`; None when none is."""
    for point, value in zip(curve, smoothed([p["task_loss"] for p in curve], smoothing), strict=True):
        if value <= target:
            return point[clock]
    return None


def common_target(curves: Mapping[str, Sequence[CurvePoint]], smoothing: float) -> float | None:
    """The worst (largest) final smoothed loss over the cells that have a curve: every cell reaches it."""
    finals = [f for f in (final_smoothed_loss(c, smoothing) for c in curves.values()) if f is not None]
    return max(finals) if finals else None


def normalised_times(
    curves: Mapping[str, Sequence[CurvePoint]], reference: str, smoothing: float, clock: str = "time_s"
) -> dict[str, Any]:
    """Time (`clock`, as in `time_to_target`) to the common target of every cell, and that time over the reference
    cell's.

    Returns:
        `{"target_loss": float | None, "time_to_target_s": {id: s | None}, "normalised": {id: ratio | None}}`;
        a ratio is None when the cell or the reference has no curve.

    Example:
        ```python
        >>> point = lambda t, loss: {"step": 0, "time_s": t, "task_loss": loss}
        >>> curves = {"top2": [point(1.0, 2.0), point(2.0, 1.0)], "adaptive": [point(0.8, 1.5), point(1.6, 1.2)]}
        >>> normalised_times(curves, "top2", smoothing=0.0)["normalised"]  # target 1.2: top2 at 2.0 s, adaptive 1.6 s
        {'top2': 1.0, 'adaptive': 0.8}
        ```
    """
    target = common_target(curves, smoothing)
    times = {
        cell: (time_to_target(curve, target, smoothing, clock) if target is not None else None)
        for cell, curve in curves.items()
    }
    reference_time = times.get(reference)
    normalised = {
        cell: (t / reference_time if t is not None and reference_time else None) for cell, t in times.items()
    }
    return {"target_loss": target, "time_to_target_s": times, "normalised": normalised}
