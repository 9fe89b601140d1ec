"""RoutingMeter with k_max > 2: token-weighted figures from counts, rank sums and old states."""

import pytest
import torch

from adamoe import LayerRoutingStats, RoutingStats
from adamoe.trainer import RoutingMeter


def layer(name: str, histogram: list[int], first: list[int], pairs: list[int]) -> LayerRoutingStats:
    tokens, top_k = sum(histogram), len(histogram)
    num_pairs = sum(pairs)
    return LayerRoutingStats(
        name,
        "encoder",
        tokens,
        1 - histogram[0] / tokens,
        first,
        [0] * len(first),  # unused by the meter once expert_counts are given
        num_pairs / (2 * tokens),
        top_k=top_k,
        k_histogram=histogram,
        expert_counts=pairs,
    )


def test_k_max_figures_are_weighted_by_tokens():
    meter = RoutingMeter()
    # k_max = 4. Forward 1: 10 tokens with k = 1, 1, 1, 1, 2, 2, 3, 3, 4, 4 -> 22 pairs.
    meter.add(RoutingStats(0.0, 0.0, [layer("a", [4, 2, 2, 2], [3, 3, 2, 2], [6, 6, 5, 5])]))
    # Forward 2: 30 tokens, all k = 1 -> 30 pairs.
    meter.add(RoutingStats(0.0, 0.0, [layer("a", [30, 0, 0, 0], [30, 0, 0, 0], [30, 0, 0, 0])]))
    figures = meter.figures()
    assert figures["two_expert_fraction"] == pytest.approx(6 / 40)
    assert figures["experts_per_token"] == pytest.approx(52 / 40)
    assert figures["flops_vs_top_k"] == pytest.approx(52 / 160)
    assert figures["flops_vs_top2"] == pytest.approx(52 / 80)
    assert figures["k_share_per_layer"]["a"] == pytest.approx([34 / 40, 2 / 40, 2 / 40, 2 / 40])
    # Loads over all choices: [36, 6, 5, 5], mean 13.
    assert figures["expert_load_max_over_mean"]["a"] == pytest.approx(36 / 13)


def test_rank_sums_and_checkpoints_keep_the_histograms():
    meter = RoutingMeter()
    meter.add(RoutingStats(0.0, 0.0, [layer("a", [4, 2, 2, 2], [3, 3, 2, 2], [6, 6, 5, 5])]))
    want = meter.figures()
    meter.reduce(lambda t: 2 * t)  # two identical ranks
    assert meter.k_histograms["a"].tolist() == [8, 4, 4, 4] and float(meter.counts["a"][0]) == 20
    assert meter.figures()["experts_per_token"] == pytest.approx(want["experts_per_token"])
    again = RoutingMeter()
    again.load_state_dict(meter.state_dict())
    assert again.figures()["k_share_per_layer"] == meter.figures()["k_share_per_layer"]
    assert again.figures()["experts_per_token"] == pytest.approx(want["experts_per_token"])


def test_a_state_without_histograms_reads_as_k_max_two():
    # [tokens, two-expert tokens, first counts (2 experts), second counts]: what the meter saved before k_max.
    old = {"a": torch.tensor([10.0, 4.0, 6.0, 4.0, 1.0, 3.0], dtype=torch.float64)}
    meter = RoutingMeter()
    meter.load_state_dict(old)
    figures = meter.figures()
    assert figures["two_expert_fraction"] == pytest.approx(0.4)
    assert figures["flops_vs_top2"] == pytest.approx(14 / 20) == figures["flops_vs_top_k"]
    assert figures["k_share_per_layer"]["a"] == pytest.approx([0.6, 0.4])
