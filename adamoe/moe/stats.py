"""What the routers decided in the last forward pass: statistics and the balance loss, read off the blocks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .balance import load_balancing_loss, router_entropy_loss
from .block import MoEBlock, moe_blocks, per_sample_grid
from .router import Router, RoutingStateError


@dataclass
class LayerRoutingStats:
    """Routing of one MoE layer over the non-padding tokens of the last forward.

    Attributes:
        name: module name of the layer.
        stack: "encoder" or "decoder".
        num_tokens: non-padding tokens routed.
        two_expert_fraction: share of those tokens that used two experts or more.
        first_choice_counts: tokens per expert as first choice.
        second_choice_counts: tokens per expert as (active) second choice.
        flops_vs_top2: expert FLOPs relative to top-2 gating, `active pairs / (2 tokens)`; with k_max = 2 that is
            `(tokens + two-expert tokens) / (2 tokens)`.
        top_k: k_max, the most experts a token could use.
        k_histogram: `k_histogram[k - 1]` tokens used exactly k experts, k = 1..k_max.
        expert_counts: active pairs per expert, over all choices (the expert's load).
        experts_per_token: mean experts per token, `active pairs / tokens`.
        flops_vs_top_k: expert FLOPs relative to fixed top-k_max gating, `active pairs / (k_max tokens)`.

    Left out, the fields after `flops_vs_top2` are derived from the ones before as a k_max = 2 routing.
    """

    name: str
    stack: str
    num_tokens: int
    two_expert_fraction: float
    first_choice_counts: list[int]
    second_choice_counts: list[int]
    flops_vs_top2: float
    top_k: int = 2
    k_histogram: list[int] | None = None
    expert_counts: list[int] | None = None
    experts_per_token: float | None = None
    flops_vs_top_k: float | None = None

    def __post_init__(self) -> None:
        if self.k_histogram is None:
            two = sum(self.second_choice_counts)
            self.k_histogram = [self.num_tokens - two, two] + [0] * (self.top_k - 2)
        if self.expert_counts is None:
            first, second = self.first_choice_counts, self.second_choice_counts
            self.expert_counts = [a + b for a, b in zip(first, second, strict=True)]
        num_pairs = sum(k * count for k, count in enumerate(self.k_histogram, start=1))
        if self.experts_per_token is None:
            self.experts_per_token = num_pairs / max(self.num_tokens, 1)
        if self.flops_vs_top_k is None:
            self.flops_vs_top_k = num_pairs / max(self.top_k * self.num_tokens, 1)


@dataclass
class RoutingStats:
    """Routing of the whole model in the last forward pass (see `routing_stats`).

    Attributes:
        two_expert_fraction: share of token-layer decisions, over all MoE layers, that used two experts or more.
        flops_vs_top2: expert FLOPs of the forward relative to top-2 gating.
        layers: one `LayerRoutingStats` per MoE layer, in model order.
        per_sample: `(batch, num_moe_layers)` per-sample complexity vectors for the curriculum (see
            `per_sample_complexity`; with k_max = 2 the two-expert fractions), or None when the blocks saw flat
            token tensors.
        experts_per_token: mean experts per token-layer decision.
        flops_vs_top_k: expert FLOPs of the forward relative to fixed top-k_max gating.
    """

    two_expert_fraction: float
    flops_vs_top2: float
    layers: list[LayerRoutingStats] = field(default_factory=list)
    per_sample: torch.Tensor | None = None
    experts_per_token: float | None = None
    flops_vs_top_k: float | None = None

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


def per_sample_complexity(model: nn.Module) -> torch.Tensor:
    """`(batch, num_moe_layers)`: for each sample of the last forward and each MoE layer, the mean over its
    non-padding tokens of `(k - 1) / (k_max - 1)`, k the experts a token used. With k_max = 2 that is the
    paper's share of tokens that used two experts. Layers that did not run in the last forward are left out."""
    columns = []
    for _, block in _routed_blocks(model):
        routing = block.last_routing
        if routing.batch_shape is None:
            raise ValueError(f"MoE layer '{block.layer_name}' saw flat tokens; per-sample fractions need a batch.")
        # k_max = 1 leaves no choice to measure: every token is as simple as can be.
        extra = (routing.num_selected - 1).float() / max(routing.top_k - 1, 1)  # (num_tokens,) in [0, 1]
        extra = per_sample_grid(routing, extra, block.seq_first)  # (batch, seq_len)
        if routing.token_mask is None:
            columns.append(extra.mean(dim=1))
        else:
            mask = per_sample_grid(routing, routing.token_mask.float(), block.seq_first)
            columns.append((extra * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0))
    return torch.stack(columns, dim=1).detach()


# The paper's name for the complexity vectors, exact for k_max = 2.
per_sample_two_expert_fractions = per_sample_complexity


def _layer_stats(block: MoEBlock) -> LayerRoutingStats:
    routing = block.last_routing
    expert_index, active = routing.expert_index, routing.active  # (num_tokens, k_max) each
    if routing.token_mask is not None:
        expert_index, active = expert_index[routing.token_mask], active[routing.token_mask]
    num_tokens, k_max = expert_index.shape
    num_experts = routing.probs.shape[-1]
    num_selected = active.sum(-1)  # (num_tokens,)
    second = expert_index[:, 1][active[:, 1]] if k_max > 1 else expert_index.new_zeros(0)
    # One read-back for all the counts: [first (E), second (E), all pairs (E), histogram (k_max)].
    counts = torch.cat(
        [
            torch.bincount(expert_index[:, 0], minlength=num_experts),
            torch.bincount(second, minlength=num_experts),
            torch.bincount(expert_index[active], minlength=num_experts),
            torch.bincount(num_selected - 1, minlength=k_max),
        ]
    ).tolist()
    first, second, pairs, histogram = (
        counts[:num_experts],
        counts[num_experts : 2 * num_experts],
        counts[2 * num_experts : 3 * num_experts],
        counts[3 * num_experts :],
    )
    num_pairs = sum(pairs)
    return LayerRoutingStats(
        name=block.layer_name,
        stack=block.stack,
        num_tokens=num_tokens,
        two_expert_fraction=(num_tokens - histogram[0]) / max(num_tokens, 1),
        first_choice_counts=first,
        second_choice_counts=second,
        flops_vs_top2=num_pairs / max(2 * num_tokens, 1),
        top_k=k_max,
        k_histogram=histogram,
        expert_counts=pairs,
        experts_per_token=num_pairs / max(num_tokens, 1),
        flops_vs_top_k=num_pairs / max(k_max * num_tokens, 1),
    )


def routing_stats(model: nn.Module) -> RoutingStats:
    """Routing statistics of the last forward pass of a patched model.

    Example:
        ```python
        >>> model(**batch)
        >>> stats = adamoe.routing_stats(model)
        >>> stats.two_expert_fraction, stats.experts_per_token, [layer.k_histogram for layer in stats.layers]
        ```
    """
    layers = [_layer_stats(block) for _, block in _routed_blocks(model)]
    tokens = sum(layer.num_tokens for layer in layers)
    multi = sum(layer.num_tokens - layer.k_histogram[0] for layer in layers)
    pairs = sum(sum(layer.expert_counts) for layer in layers)
    slots = sum(layer.top_k * layer.num_tokens for layer in layers)
    try:
        per_sample = per_sample_complexity(model)
    except ValueError:
        per_sample = None
    return RoutingStats(
        two_expert_fraction=multi / max(tokens, 1),
        flops_vs_top2=pairs / max(2 * tokens, 1),
        layers=layers,
        per_sample=per_sample,
        experts_per_token=pairs / max(tokens, 1),
        flops_vs_top_k=pairs / max(slots, 1),
    )


# Reentrant activation checkpointing runs the checkpointed forward under no_grad and recomputes it in backward, so
# the routing a block keeps for the balance loss carries no graph: training would silently stop balancing.
LOST_GRADIENT = (
    "The balance loss of {name} has no gradient: the block ran its forward without autograd, as reentrant "
    "gradient checkpointing (use_reentrant=True) does, so training would silently stop balancing the routers. Use "
    "non-reentrant checkpointing, transformers' default: model.gradient_checkpointing_enable("
    "gradient_checkpointing_kwargs={{'use_reentrant': False}}), or gradient_checkpointing_kwargs="
    "{{'use_reentrant': false}} in the run config's training section."
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
    for name, block in _routed_blocks(model):
        routing = block.last_routing
        if block.training and torch.is_grad_enabled() and block.router.weight.requires_grad:
            if not routing.probs.requires_grad:
                raise RuntimeError(LOST_GRADIENT.format(name=name))
        if block.config.aux_loss_coef > 0:
            # Over the real experts only: the null experts' share is the compute a token skips, not a load to spread.
            layer_loss = load_balancing_loss(routing.expert_probs, routing.expert_index[:, 0], routing.token_mask)
            total = total + block.config.aux_loss_coef * layer_loss
        if block.config.entropy_loss_coef > 0:
            total = total + block.config.entropy_loss_coef * router_entropy_loss(routing.probs, routing.token_mask)
    return total


def update_routing_state(model: nn.Module) -> None:
    """Move every router's rule state by one training step, from the routing of the last forward.

    Only rules with state have any: a `target_experts` controller (gap, top-p) and expert-threshold's moving
    averages (`adamoe/moe/rules.py`). `AdaMoETrainer` calls it after each micro-batch's backward; a training loop
    of one's own calls it after `loss.backward()`. A forward never changes the state itself, so a forward
    recomputed by activation checkpointing routes as the first one did.

    Example:
        ```python
        >>> loss = model(**batch).loss + adamoe.balance_loss(model)
        >>> loss.backward()
        >>> adamoe.update_routing_state(model)
        ```
    """
    for _, block in _routed_blocks(model):
        # Every router inside the block: a PEFT wrapper (modules_to_save) holds the original and its trained copies.
        for router in (module for module in block.modules() if isinstance(module, Router)):
            router.update_state(block.last_routing)


def check_routing_state(model: nn.Module) -> None:
    """Raise `RoutingStateError` before an evaluation if a router's rule needs state it does not have (expert-threshold
    routing on weights that were never trained with it), rather than at the first forward, after files are written."""
    for name, block in moe_blocks(model):
        for router in (module for module in block.modules() if isinstance(module, Router)):
            thresholds = router._buffers.get("expert_thresholds")
            if router.config.gating == "adaptive" and thresholds is not None and torch.isnan(thresholds).any():
                raise RoutingStateError(
                    f"rule='expert_threshold' routes by thresholds estimated in training, and the router of {name} "
                    "has none: these weights were not trained with the rule. Fine-tune with --rule expert_threshold "
                    "(a few steps estimate them), or evaluate with another rule (gap, top_p)."
                )


class PairCounter:
    """Active token-expert pairs and routed tokens over every forward of every MoE block, padding left out: the
    measured compute of an evaluation (generation steps included), in all and per layer.

    Example:
        ```python
        >>> counter = PairCounter(model)
        >>> trainer.evaluate()
        >>> counter.experts_per_token(), counter.experts_per_token_per_layer()
        >>> counter.close()
        ```
    """

    def __init__(self, model: nn.Module) -> None:
        self.per_layer = {name: [0, 0] for name, _ in moe_blocks(model)}  # name -> [pairs, tokens]
        self._hooks = [
            block.register_forward_hook(lambda module, args, output, name=name: self._count(name, module))
            for name, block in moe_blocks(model)
        ]

    def _count(self, name: str, block: MoEBlock) -> None:
        routing = block.last_routing
        active = routing.active  # (num_tokens, k_max)
        if routing.token_mask is not None:
            active = active[routing.token_mask]
        self.per_layer[name][0] += int(active.sum())
        self.per_layer[name][1] += active.shape[0]

    @property
    def pairs(self) -> int:
        return sum(pairs for pairs, _ in self.per_layer.values())

    @property
    def tokens(self) -> int:
        return sum(tokens for _, tokens in self.per_layer.values())

    def reset(self) -> None:
        for counts in self.per_layer.values():
            counts[:] = [0, 0]

    def experts_per_token(self) -> float | None:
        """Mean experts a routed token used, over every layer; None before any forward."""
        return self.pairs / self.tokens if self.tokens else None

    def experts_per_token_per_layer(self) -> dict[str, float]:
        return {name: pairs / tokens for name, (pairs, tokens) in self.per_layer.items() if tokens}

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
