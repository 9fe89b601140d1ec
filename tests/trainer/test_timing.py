"""Time to target on a synthetic loss sequence, token counting and run-level routing figures, by hand."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from adamoe import LayerRoutingStats, RoutingStats
from adamoe.trainer import RoutingMeter, TimingCallback, count_tokens


def _begin(callback: TimingCallback) -> float:
    callback.on_train_begin(TrainingArguments(output_dir="unused", report_to="none"), TrainerState(), TrainerControl())
    return callback._start


def test_time_to_target_with_a_bias_corrected_ema_on_a_synthetic_sequence() -> None:
    callback = TimingCallback(target_loss=1.0, smoothing=0.5)
    start = _begin(callback)
    # Logged losses 2.0, 1.0, 0.6, 0.8 at t = 10, 20, 30, 40 s. Bias-corrected EMA (0.5), by hand: the weighted mean
    # with weights 0.5 ** (n - i) over the losses so far, i.e. 2.0; (2 + 2*1) / 3 = 1.333; (2 + 2*1 + 4*0.6) / 7 =
    # 0.914 <= 1.0: reached at the 3rd log, as the raw losses did (but not at the 2nd, where the raw 1.0 touched it);
    # then (2 + 2 + 2.4 + 8*0.8) / 15 = 0.853.
    expected_ema = [2.0, 4 / 3, 6.4 / 7, 12.8 / 15]
    for k, (loss, ema) in enumerate(zip([2.0, 1.0, 0.6, 0.8], expected_ema, strict=True), start=1):
        callback.observe_loss(loss, now=start + 10.0 * k)
        assert callback.smoothed_loss == pytest.approx(ema)
        assert callback.time_to_target_s == (pytest.approx(30.0) if k >= 3 else None)
    callback.observe_loss(5.0, now=start + 50.0)  # the first crossing is kept
    assert callback.time_to_target_s == pytest.approx(30.0)


def test_a_short_run_reaches_a_target_its_losses_passed_long_ago() -> None:
    # Five logs of a run whose loss fell fast: an EMA seeded with the first loss (weight 0.9 ** 4 = 66%) would
    # still read 0.53; the bias-corrected one weighs the first log 0.9 ** 4 * 0.1 / (1 - 0.9 ** 5) = 16%.
    callback = TimingCallback(target_loss=0.45, smoothing=0.9)
    start = _begin(callback)
    losses = [0.7, 0.35, 0.33, 0.32, 0.31]
    for k, loss in enumerate(losses, start=1):
        callback.observe_loss(loss, now=start + k)
    weights = [0.9 ** (len(losses) - i) for i in range(1, len(losses) + 1)]
    weighted = sum(w * x for w, x in zip(weights, losses, strict=True))
    assert callback.smoothed_loss == pytest.approx(weighted / sum(weights))
    assert callback.time_to_target_s == pytest.approx(3.0)  # (0.7*0.81 + 0.35*0.9 + 0.33) / 2.71 = 0.447


def test_evaluation_time_is_excluded_and_unreached_target_is_none() -> None:
    callback = TimingCallback(target_loss=0.1, smoothing=0.0)
    start = _begin(callback)
    callback.exclude(3.0)  # an evaluation of 3 s before the log at t = 10 s
    callback.observe_loss(0.05, now=start + 10.0)
    assert callback.time_to_target_s == pytest.approx(7.0)

    never = TimingCallback(target_loss=0.1)
    never_start = _begin(never)
    never.observe_loss(0.5, now=never_start + 1.0)
    never.record_batch(num_tokens=120)
    summary = never.summary()
    assert summary["time_to_target_s"] is None
    assert summary["num_tokens"] == 120
    assert summary["two_expert_fraction"] is None and summary["flops_vs_top2"] is None  # no routing: dense


def test_cpu_clock_leaves_out_excluded_cpu_seconds(monkeypatch) -> None:
    clock = iter([100.0, 112.5])  # process CPU at train begin, then when read
    monkeypatch.setattr("adamoe.trainer.timing.time.process_time", lambda: next(clock))
    callback = TimingCallback()
    assert callback.cpu_elapsed_s() is None  # before training
    _begin(callback)
    callback.exclude(4.0, cpu_seconds=2.5)  # an evaluation that used 2.5 CPU seconds
    assert callback.cpu_elapsed_s() == pytest.approx(10.0)


def test_on_log_smooths_task_loss_not_total_loss() -> None:
    callback = TimingCallback(target_loss=1.0, smoothing=0.0)
    _begin(callback)
    args, state, control = TrainingArguments(output_dir="unused", report_to="none"), TrainerState(), TrainerControl()
    callback.on_log(args, state, control, logs={"loss": 1.05, "task_loss": 0.98, "balance_loss": 0.07})
    assert callback.smoothed_loss == pytest.approx(0.98) and callback.time_to_target_s is not None
    callback.on_log(args, state, control, logs={"eval_loss": 9.0})  # evaluation logs are not training losses
    assert callback.smoothed_loss == pytest.approx(0.98)


def test_state_round_trip_continues_the_clock() -> None:
    callback = TimingCallback(target_loss=0.5)
    _begin(callback)
    callback.record_batch(num_tokens=10)
    state = callback.state_dict()
    state["elapsed_s"] = 100.0  # as if the checkpointed run had trained for 100 s
    state["cpu_elapsed_s"] = 80.0  # with 80 s of CPU

    resumed = TimingCallback(target_loss=0.5)
    resumed.load_state_dict(state)
    start = _begin(resumed)
    assert resumed.num_tokens == 10
    assert resumed.elapsed_s(now=start + 5.0) == pytest.approx(105.0)
    assert 80.0 <= resumed.cpu_elapsed_s() < 81.0  # the CPU clock continues too


def test_count_tokens() -> None:
    attention_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    labels = torch.tensor([[5, 6, -100], [7, -100, -100]])
    batch = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": attention_mask, "labels": labels}
    assert count_tokens(batch, is_encoder_decoder=False) == 5
    assert count_tokens(batch, is_encoder_decoder=True) == 5 + 3
    assert count_tokens({"input_ids": torch.zeros(3, 4)}, is_encoder_decoder=False) == 12


def _stats(layers: list[tuple[str, int, list[int], list[int]]]) -> RoutingStats:
    out = []
    for name, tokens, first, second in layers:
        two = sum(second)
        out.append(
            LayerRoutingStats(name, "encoder", tokens, two / tokens, first, second, (tokens + two) / (2 * tokens))
        )
    return RoutingStats(two_expert_fraction=0.0, flops_vs_top2=0.0, layers=out)


def test_routing_meter_weights_by_tokens() -> None:
    meter = RoutingMeter()
    # Forward 1: layer a, 10 tokens, 5 with two experts; layer b, 10 tokens, 0.
    meter.add(_stats([("a", 10, [4, 3, 2, 1], [1, 1, 2, 1]), ("b", 10, [10, 0, 0, 0], [0, 0, 0, 0])]))
    # Forward 2: layer a, 30 tokens, 3 with two experts; layer b, 30 tokens, 30.
    meter.add(_stats([("a", 30, [10, 10, 5, 5], [0, 0, 0, 3]), ("b", 30, [0, 10, 10, 10], [30, 0, 0, 0])]))
    figures = meter.figures()
    # a: 8 / 40 = 0.2 (the mean of the per-forward fractions, (0.5 + 0.1) / 2 = 0.3, would overweight forward 1).
    # b: 30 / 40 = 0.75. All: 38 / 80 = 0.475; flops_vs_top2 = (80 + 38) / 160 = 0.7375.
    assert figures["two_expert_fraction_per_layer"] == pytest.approx({"a": 0.2, "b": 0.75})
    assert figures["two_expert_fraction"] == pytest.approx(0.475)
    assert figures["flops_vs_top2"] == pytest.approx(0.7375)
    # Loads (first + second): a = [15, 14, 9, 10], mean 12 -> 15 / 12 = 1.25; b = [40, 10, 10, 10] -> 40 / 17.5.
    assert figures["expert_load_max_over_mean"] == pytest.approx({"a": 1.25, "b": 40 / 17.5})
