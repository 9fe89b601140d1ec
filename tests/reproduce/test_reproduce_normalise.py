"""Normalised training time on hand-made curves, worked out by hand, and against the trainer's own EMA."""

from __future__ import annotations

import json

import pytest

from adamoe.reproduce.normalise import (
    final_smoothed_loss,
    loss_curve,
    normalised_times,
    smoothed,
    time_to_target,
)
from adamoe.trainer.timing import TimingCallback


def curve(*points: tuple[float, float]) -> list[dict]:
    return [{"step": i + 1, "time_s": t, "task_loss": loss} for i, (t, loss) in enumerate(points)]


def test_ema_matches_the_timing_callback():
    losses = [2.0, 1.4, 1.1, 0.9, 0.95, 0.7]
    callback = TimingCallback(smoothing=0.6)
    expected = []
    for loss in losses:
        callback.observe_loss(loss)
        expected.append(callback.smoothed_loss)
    assert smoothed(losses, 0.6) == pytest.approx(expected)
    # By hand, the mean with weights 0.6 ** (n - i): 2.0, (0.6*2.0 + 1.4) / 1.6 = 1.625,
    # (0.36*2.0 + 0.6*1.4 + 1.1) / 1.96 = 1.3571
    assert smoothed(losses, 0.6)[:3] == pytest.approx([2.0, 1.625, 2.66 / 1.96])


def test_target_is_the_worst_final_loss_and_times_are_relative_to_the_reference():
    curves = {
        "top2": curve((10.0, 3.0), (20.0, 2.0), (30.0, 1.0)),
        "top1": curve((8.0, 3.0), (16.0, 2.5), (24.0, 1.5)),
        "adaptive": curve((7.0, 2.8), (14.0, 1.4), (21.0, 1.2)),
        "dense": curve((5.0, 3.5), (10.0, 2.0), (15.0, 1.6)),  # the worst final loss: the target
    }
    result = normalised_times(curves, "top2", smoothing=0.0)
    assert result["target_loss"] == 1.6
    # First logging event at or below 1.6 in each curve, over top-2's 30 s.
    assert result["time_to_target_s"] == {"top2": 30.0, "top1": 24.0, "adaptive": 14.0, "dense": 15.0}
    assert result["normalised"] == pytest.approx({"top2": 1.0, "top1": 0.8, "adaptive": 14 / 30, "dense": 0.5})


def test_every_cell_reaches_the_common_target():
    curves = {
        "top2": curve((1.0, 2.0), (2.0, 1.0)),
        "adaptive": curve((0.8, 1.5), (1.6, 1.2)),
        "dense": curve((0.5, 3.0), (1.0, 1.8)),
    }
    result = normalised_times(curves, "top2", smoothing=0.0)
    assert result["target_loss"] == 1.8
    assert result["time_to_target_s"] == {"top2": 2.0, "adaptive": 0.8, "dense": 1.0}
    assert result["normalised"] == pytest.approx({"top2": 1.0, "adaptive": 0.4, "dense": 0.5})


def test_smoothing_delays_the_crossing():
    points = curve((1.0, 4.0), (2.0, 1.0), (3.0, 1.0), (4.0, 1.0))
    assert time_to_target(points, 1.5, 0.0) == 2.0
    # s = 0.5, weights 0.5 ** (n - i): 4.0, (2 + 1) / 1.5 = 2.0, (1 + 0.5 + 1) / 1.75 = 1.43 -> first <= 1.5 at the
    # third event; finally (0.5 + 0.25 + 0.5 + 1) / 1.875 = 1.2.
    assert final_smoothed_loss(points, 0.5) == pytest.approx(1.2)
    assert time_to_target(points, 1.5, 0.5) == 3.0


def test_missing_curves_give_none_not_a_crash():
    result = normalised_times({"top2": [], "adaptive": curve((1.0, 1.0))}, "top2", smoothing=0.0)
    assert result["target_loss"] == 1.0
    assert result["time_to_target_s"] == {"top2": None, "adaptive": 1.0}
    assert result["normalised"] == {"top2": None, "adaptive": None}


def _write_state(run_dir, step, history):
    folder = run_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))


def test_loss_curve_reads_the_last_checkpoint_and_its_clock(tmp_path):
    history = [
        {"loss": 2.1, "task_loss": 2.0, "step": 2, "train_runtime": 0.5},
        {"loss": 1.2, "task_loss": 1.1, "step": 4, "train_runtime": 1.25},
        {"eval_loss": 1.3, "step": 4},
        {"train_runtime": 1.4, "train_loss": 1.6, "step": 4},  # the end-of-training summary: no task loss
    ]
    _write_state(tmp_path, 2, history[:1])
    _write_state(tmp_path, 10, history)
    points, clock = loss_curve(tmp_path)
    assert clock == "train_runtime"
    assert points == [{"step": 2, "time_s": 0.5, "task_loss": 2.0}, {"step": 4, "time_s": 1.25, "task_loss": 1.1}]


def test_loss_curve_without_a_clock_interpolates_by_step(tmp_path):
    _write_state(tmp_path, 4, [{"loss": 2.0, "step": 2}, {"loss": 1.0, "step": 4}])
    points, clock = loss_curve(tmp_path, train_time_s=8.0)
    assert clock == "step_interpolated"
    assert [p["time_s"] for p in points] == [4.0, 8.0] and [p["task_loss"] for p in points] == [2.0, 1.0]
    assert loss_curve(tmp_path / "nothing") == ([], "none")


def test_loss_curve_keeps_the_cpu_clock_and_times_can_be_read_on_it(tmp_path):
    history = [
        {"loss": 2.0, "step": 2, "train_runtime": 1.0, "train_cpu_s": 0.5},
        {"loss": 1.0, "step": 4, "train_runtime": 3.0, "train_cpu_s": 1.0},
    ]
    _write_state(tmp_path, 4, history)
    points, _ = loss_curve(tmp_path)
    assert [p["cpu_s"] for p in points] == [0.5, 1.0]
    other = [{"step": 2, "time_s": 1.0, "cpu_s": 0.8, "task_loss": 1.0}]
    times = normalised_times({"a": points, "b": other}, "a", smoothing=0.0, clock="cpu_s")
    assert times["time_to_target_s"] == {"a": 1.0, "b": 0.8} and times["normalised"]["b"] == pytest.approx(0.8)
