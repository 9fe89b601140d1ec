"""Running, token-weighted routing figures over many training forwards.

`adamoe.routing_stats(model)` describes one forward. Averaging its per-forward fractions would weight a batch
of short sequences like a batch of long ones, so `RoutingMeter` keeps *counts* per layer (routed tokens,
two-expert tokens, tokens per expert) and derives the fractions from the sums. The token-weighted mean of the
per-forward `flops_vs_top2 = (tokens + two_expert_tokens) / (2 tokens)` is the same formula over the sums.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..stats import RoutingStats


class RoutingMeter:
    """Accumulate routing counts per MoE layer; `figures()` turns them into fractions and loads.

    Example:
        ```python
        >>> meter = RoutingMeter()
        >>> meter.add(adamoe.routing_stats(model))  # after each training forward
        >>> meter.figures()["two_expert_fraction"]
        ```
    """

    def __init__(self) -> None:
        # layer name -> (2 + 2 * num_experts,) float64: [tokens, two_expert_tokens, first counts..., second counts...]
        self.counts: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        self.counts = {}

    def __bool__(self) -> bool:
        return bool(self.counts)

    def add(self, stats: RoutingStats) -> None:
        """Add the counts of one forward."""
        for layer in stats.layers:
            two_expert_tokens = sum(layer.second_choice_counts)  # a second choice is counted only when active
            row = torch.tensor(
                [layer.num_tokens, two_expert_tokens, *layer.first_choice_counts, *layer.second_choice_counts],
                dtype=torch.float64,
            )
            self.counts[layer.name] = self.counts[layer.name] + row if layer.name in self.counts else row

    def reduce(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace the counts by their sum over ranks; `reduce_sum` must be a collective sum (call on all ranks)."""
        if not self.counts:
            return
        names = list(self.counts)
        sizes = [self.counts[n].numel() for n in names]
        summed = reduce_sum(torch.cat([self.counts[n] for n in names]))
        self.counts = dict(zip(names, summed.cpu().to(torch.float64).split(sizes), strict=True))

    def figures(self) -> dict[str, float | dict[str, float]]:
        """Run-level figures: `two_expert_fraction`, `flops_vs_top2` (both over all layers' tokens) and, per
        layer, `two_expert_fraction_per_layer` and `expert_load_max_over_mean` (tokens handled by the busiest
        expert over the mean per expert, first and second choices together; 1.0 is perfect balance)."""
        tokens = two = 0.0
        per_layer, load = {}, {}
        for name, row in self.counts.items():
            num_experts = (row.numel() - 2) // 2
            layer_tokens, layer_two = float(row[0]), float(row[1])
            expert_load = row[2 : 2 + num_experts] + row[2 + num_experts :]  # (num_experts,)
            per_layer[name] = layer_two / max(layer_tokens, 1.0)
            load[name] = float(expert_load.max() / expert_load.mean().clamp_min(1e-12))
            tokens, two = tokens + layer_tokens, two + layer_two
        return {
            "two_expert_fraction": two / max(tokens, 1.0),
            "flops_vs_top2": (tokens + two) / max(2.0 * tokens, 1.0),
            "two_expert_fraction_per_layer": per_layer,
            "expert_load_max_over_mean": load,
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.counts)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.counts = {name: row.to(torch.float64) for name, row in state.items()}
