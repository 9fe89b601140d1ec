"""What the routers decided in the last forward pass: statistics and the balance loss, read off the blocks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .balance import load_balancing_loss
from .layer import MoEBlock, per_sample_grid
from .patching import moe_blocks


@dataclass
class LayerRoutingStats:
    """Routing of one MoE layer over the non-padding tokens of the last forward.

    Attributes:
        name: module name of the layer.
        stack: "encoder" or "decoder".
        num_tokens: non-padding tokens routed.
        two_expert_fraction: share of those tokens that used two experts.
        first_choice_counts: tokens per expert as first choice.
        second_choice_counts: tokens per expert as (active) second choice.
        flops_vs_top2: expert FLOPs relative to top-2 gating, `(tokens + two-expert tokens) / (2 tokens)`.
    """

    name: str
    stack: str
    num_tokens: int
    two_expert_fraction: float
    first_choice_counts: list[int]
    second_choice_counts: list[int]
    flops_vs_top2: float


@dataclass
class RoutingStats:
    """Routing of the whole model in the last forward pass (see `routing_stats`).

    Attributes:
        two_expert_fraction: share of token-layer decisions, over all MoE layers, that used two experts.
        flops_vs_top2: expert FLOPs of the forward relative to top-2 gating.
        layers: one `LayerRoutingStats` per MoE layer, in model order.
        per_sample: `(batch, num_moe_layers)` per-sample two-expert fractions (the curriculum's
            complexity vectors), or None when the blocks saw flat token tensors.
    """

    two_expert_fraction: float
    flops_vs_top2: float
    layers: list[LayerRoutingStats] = field(default_factory=list)
    per_sample: torch.Tensor | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["per_sample"] = None if self.per_sample is None else self.per_sample.tolist()
        return out


def _routed_blocks(model: nn.Module) -> list[tuple[str, MoEBlock]]:
    blocks = moe_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no MoE blocks: call adamoe.moeify or adamoe.from_pretrained.")
    routed = [(name, block) for name, block in blocks if block.last_routing is not None]
    if not routed:
        raise ValueError("No routing recorded yet: run a forward pass first.")
    return routed


def per_sample_two_expert_fractions(model: nn.Module) -> torch.Tensor:
    """`(batch, num_moe_layers)`: for each sample of the last forward, the share of its non-padding tokens
    that used two experts in each MoE layer. Layers that did not run in the last forward are left out."""
    columns = []
    for _, block in _routed_blocks(model):
        routing = block.last_routing
        if routing.batch_shape is None:
            raise ValueError(f"MoE layer '{block.layer_name}' saw flat tokens; per-sample fractions need a batch.")
        two = per_sample_grid(routing, routing.second_active.float(), block.seq_first)  # (batch, seq_len)
        if routing.token_mask is None:
            columns.append(two.mean(dim=1))
        else:
            mask = per_sample_grid(routing, routing.token_mask.float(), block.seq_first)
            columns.append((two * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0))
    return torch.stack(columns, dim=1).detach()


def routing_stats(model: nn.Module) -> RoutingStats:
    """Routing statistics of the last forward pass of a patched model.

    Example:
        ```python
        >>> model(**batch)
        >>> stats = adamoe.routing_stats(model)
        >>> stats.two_expert_fraction, [layer.two_expert_fraction for layer in stats.layers]
        ```
    """
    layers, total_tokens, total_two = [], 0, 0
    for _, block in _routed_blocks(model):
        routing = block.last_routing
        first, second, two = routing.expert_index[:, 0], routing.expert_index[:, 1], routing.second_active
        if routing.token_mask is not None:
            first, second, two = first[routing.token_mask], second[routing.token_mask], two[routing.token_mask]
        num_experts = routing.probs.shape[-1]
        num_tokens, num_two = int(first.numel()), int(two.sum())
        layers.append(
            LayerRoutingStats(
                name=block.layer_name,
                stack=block.stack,
                num_tokens=num_tokens,
                two_expert_fraction=num_two / max(num_tokens, 1),
                first_choice_counts=torch.bincount(first, minlength=num_experts).tolist(),
                second_choice_counts=torch.bincount(second[two], minlength=num_experts).tolist(),
                flops_vs_top2=(num_tokens + num_two) / max(2 * num_tokens, 1),
            )
        )
        total_tokens, total_two = total_tokens + num_tokens, total_two + num_two
    try:
        per_sample = per_sample_two_expert_fractions(model)
    except ValueError:
        per_sample = None
    return RoutingStats(
        two_expert_fraction=total_two / max(total_tokens, 1),
        flops_vs_top2=(total_tokens + total_two) / max(2 * total_tokens, 1),
        layers=layers,
        per_sample=per_sample,
    )


def balance_loss(model: nn.Module) -> torch.Tensor:
    """The paper's Eq. 4 summed over the MoE layers of the last forward, times `aux_loss_coef`.

    Add it to the task loss in training only; it is never part of an evaluation loss or perplexity.

    Example:
        ```python
        >>> outputs = model(**batch)
        >>> loss = outputs.loss + adamoe.balance_loss(model)
        >>> loss.backward()
        ```
    """
    total = torch.zeros((), device=next(model.parameters()).device)
    for _, block in _routed_blocks(model):
        routing = block.last_routing
        if block.config.aux_loss_coef > 0:
            layer_loss = load_balancing_loss(routing.probs, routing.expert_index[:, 0], routing.token_mask)
            total = total + block.config.aux_loss_coef * layer_loss
    return total
