"""Running, token-weighted routing figures over many training forwards.

`adamoe.routing_stats(model)` describes one forward. Averaging its per-forward fractions would weight a batch
of short sequences like a batch of long ones, so `RoutingMeter` keeps *counts* per layer (routed tokens,
tokens on two experts or more, pairs per expert, tokens per number of experts) and derives the fractions from
the sums. The token-weighted mean of the per-forward `flops_vs_top2 = active pairs / (2 tokens)` is the same
formula over the sums.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..moe.stats import RoutingStats


class RoutingMeter:
    """Accumulate routing counts per MoE layer; `figures()` turns them into fractions and loads.

    Example:
        ```python
        >>> meter = RoutingMeter()
        >>> meter.add(adamoe.routing_stats(model))  # after each training forward
        >>> meter.figures()["two_expert_fraction"], meter.figures()["experts_per_token"]
        ```
    """

    def __init__(self) -> None:
        # layer name -> (2 + 2 * num_experts,) float64:
        #   [tokens, two_expert_tokens, first-choice counts..., counts as a further choice (2..k_max)...]
        # With k_max = 2 the further choices are the second choices.
        self.counts: dict[str, torch.Tensor] = {}
        # layer name -> (k_max,) float64: tokens that used exactly k = 1..k_max experts.
        self.k_histograms: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        self.counts, self.k_histograms = {}, {}

    def __bool__(self) -> bool:
        return bool(self.counts)

    def add(self, stats: RoutingStats) -> None:
        """Add the counts of one forward."""
        for layer in stats.layers:
            further = [a - b for a, b in zip(layer.expert_counts, layer.first_choice_counts, strict=True)]
            row = torch.tensor(
                [layer.num_tokens, layer.num_tokens - layer.k_histogram[0], *layer.first_choice_counts, *further],
                dtype=torch.float64,
            )
            histogram = torch.tensor(layer.k_histogram, dtype=torch.float64)  # (k_max,)
            if layer.name in self.counts:
                row, histogram = row + self.counts[layer.name], histogram + self.k_histograms[layer.name]
            self.counts[layer.name], self.k_histograms[layer.name] = row, histogram

    def reduce(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace the counts by their sum over ranks; `reduce_sum` must be a collective sum (call on all ranks)."""
        if not self.counts:
            return
        names = list(self.counts)
        tensors = [self.counts[n] for n in names] + [self.k_histograms[n] for n in names]
        summed = reduce_sum(torch.cat(tensors)).cpu().to(torch.float64).split([t.numel() for t in tensors])
        self.counts = dict(zip(names, summed[: len(names)], strict=True))
        self.k_histograms = dict(zip(names, summed[len(names) :], strict=True))

    def figures(self) -> dict[str, float | dict[str, float] | dict[str, list[float]]]:
        """Run-level figures, over all layers' tokens: `two_expert_fraction` (tokens on two experts or more),
        `experts_per_token`, `flops_vs_top2` and `flops_vs_top_k` (expert FLOPs relative to fixed top-2 and to
        fixed top-k_max). Per layer: `two_expert_fraction_per_layer`, `experts_per_token_per_layer`,
        `k_share_per_layer` (the share of tokens that used k = 1..k_max experts) and `expert_load_max_over_mean`
        (pairs handled by the busiest expert over the mean per expert, all choices together; 1.0 is perfect
        balance)."""
        tokens = two = pairs = slots = 0.0
        per_layer, per_token, shares, load = {}, {}, {}, {}
        for name, row in self.counts.items():
            num_experts = (row.numel() - 2) // 2
            histogram = self.k_histograms[name]
            layer_tokens, layer_two = float(row[0]), float(row[1])
            expert_load = row[2 : 2 + num_experts] + row[2 + num_experts :]  # (num_experts,) pairs per expert
            layer_pairs = float(expert_load.sum())
            per_layer[name] = layer_two / max(layer_tokens, 1.0)
            per_token[name] = layer_pairs / max(layer_tokens, 1.0)
            shares[name] = (histogram / max(layer_tokens, 1.0)).tolist()
            load[name] = float(expert_load.max() / expert_load.mean().clamp_min(1e-12))
            tokens, two, pairs = tokens + layer_tokens, two + layer_two, pairs + layer_pairs
            slots += histogram.numel() * layer_tokens
        return {
            "two_expert_fraction": two / max(tokens, 1.0),
            "experts_per_token": pairs / max(tokens, 1.0),
            "flops_vs_top2": pairs / max(2.0 * tokens, 1.0),
            "flops_vs_top_k": pairs / max(slots, 1.0),
            "two_expert_fraction_per_layer": per_layer,
            "experts_per_token_per_layer": per_token,
            "k_share_per_layer": shares,
            "expert_load_max_over_mean": load,
        }

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"counts": dict(self.counts), "k_histograms": dict(self.k_histograms)}

    def load_state_dict(self, state: dict) -> None:
        """Load `state_dict()`'s output, or the `{layer name: counts}` of a meter that kept no histogram (which
        counted routings of at most two experts, so the histogram follows from the counts)."""
        if set(state) == {"counts", "k_histograms"}:
            counts, histograms = state["counts"], state["k_histograms"]
        else:
            counts = state
            histograms = {name: torch.stack([row[0] - row[1], row[1]]) for name, row in counts.items()}
        self.counts = {name: row.to(torch.float64) for name, row in counts.items()}
        self.k_histograms = {name: histograms[name].to(torch.float64) for name in counts}
