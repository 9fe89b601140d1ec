"""The router: the only place that knows the gating rule and the threshold T.

Adaptive gating (Li et al., 2023, §3.1): with p1 >= p2 the two largest softmax gate probabilities of a
token, the token goes to its top-1 expert, and also to its top-2 expert when the router is unsure, i.e.
when the gap between p1 and p2 is at most T. The router runs in float32 whatever the autocast dtype:
the decision compares probabilities that differ by a few percent, which bf16's 8-bit mantissa blurs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import MoEConfig


class RouterNumericsError(FloatingPointError):
    """A router produced NaN or infinite logits: training further would only learn from garbage."""


@dataclass
class RoutingDecision:
    """Where each token goes, as the router decided it in one forward pass.

    Attributes:
        probs: `(num_tokens, num_experts)` float32 softmax gate probabilities.
        expert_index: `(num_tokens, 2)` long, first- and second-choice expert of every token.
        second_active: `(num_tokens,)` bool, whether the token also goes to its second-choice expert.
        combine_weights: `(num_tokens, 2)` weights of the two choices in the output (0 where inactive).
        token_mask: `(num_tokens,)` bool, False on padding; None when every token is real.
        batch_shape: `(batch, seq_len)`, to read per-sample statistics back out of the flat token axis.
    """

    probs: torch.Tensor
    expert_index: torch.Tensor
    second_active: torch.Tensor
    combine_weights: torch.Tensor
    token_mask: torch.Tensor | None = None
    batch_shape: tuple[int, int] | None = None

    @property
    def active(self) -> torch.Tensor:
        """`(num_tokens, 2)` bool: which of the two choices are used (the first always is)."""
        return torch.stack([torch.ones_like(self.second_active), self.second_active], dim=-1)


def select_experts(
    probs: torch.Tensor, *, gating: str, threshold: float, threshold_on: str = "normalized"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the gating rule to gate probabilities.

    Args:
        probs: `(num_tokens, num_experts)` softmax gate probabilities.
        gating: "adaptive", "top1" or "top2".
        threshold: T; any float is accepted here (T < 0: never two experts, T >= 1: always).
        threshold_on: "normalized" compares (p1 - p2) / (p1 + p2) with T, "raw" compares p1 - p2.

    Returns:
        `expert_index` `(num_tokens, 2)` and `second_active` `(num_tokens,)` bool.
    """
    top_probs, expert_index = probs.topk(2, dim=-1)  # (num_tokens, 2) each, p1 >= p2
    p1, p2 = top_probs.unbind(-1)
    if gating == "top1":
        second_active = torch.zeros_like(p1, dtype=torch.bool)
    elif gating == "top2":
        second_active = torch.ones_like(p1, dtype=torch.bool)
    elif gating == "adaptive":
        gap = p1 - p2
        if threshold_on == "normalized":
            # p1 + p2 > 0 always (softmax), and the normalised gap stays in [0, 1] however many experts.
            gap = gap / (p1 + p2)
        second_active = gap <= threshold
    else:
        raise ValueError(f"Unknown gating {gating!r}.")
    return expert_index, second_active


def combine_weights(
    probs: torch.Tensor, expert_index: torch.Tensor, second_active: torch.Tensor, *, combine: str
) -> torch.Tensor:
    """Output weights of the two choices of each token, `(num_tokens, 2)`, 0 for an unused second choice.

    "gate" is the paper's Eq. 3: each selected expert weighted by its gate probability. "normalized"
    divides by the sum over the selected experts. For a one-expert token that sum is p1 itself, so the
    weight p1 / p1 would be a constant 1 and the router would get no gradient from the task loss through
    those tokens; dividing by a detached p1 keeps the value exactly 1 and the gradient of p1 (the
    straight-through form also used by Switch-style top-1 routers).
    """
    selected = probs.gather(-1, expert_index) * torch.stack(
        [torch.ones_like(second_active), second_active], dim=-1
    ).to(probs.dtype)  # (num_tokens, 2)
    if combine == "gate":
        return selected
    if combine != "normalized":
        raise ValueError(f"Unknown combine {combine!r}.")
    total = selected.sum(-1, keepdim=True)  # (num_tokens, 1)
    total = torch.where(second_active.unsqueeze(-1), total, total.detach())
    return selected / total


class Router(nn.Module):
    """Linear gate `x -> softmax(x W_g)` followed by the gating rule of a `MoEConfig`.

    Example:
        ```python
        >>> router = Router(hidden_size=8, config=MoEConfig(num_experts=4, threshold=0.2))
        >>> decision = router(torch.randn(5, 8))
        >>> decision.expert_index.shape
        torch.Size([5, 2])
        ```
    """

    def __init__(self, hidden_size: int, config: MoEConfig) -> None:
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.empty(config.num_experts, hidden_size))
        nn.init.normal_(self.weight, std=config.router_init_std)

    def logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(num_tokens, hidden)` -> `(num_tokens, num_experts)` float32 logits, outside autocast."""
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            return hidden_states.float() @ self.weight.float().t()

    def forward(self, hidden_states: torch.Tensor) -> RoutingDecision:
        logits = self.logits(hidden_states)
        if self.config.num_experts == 1:
            # topk(2) needs two experts; a single expert is the dense FFN with weight 1.
            probs = torch.ones_like(logits) + (logits - logits.detach())
            expert_index = torch.zeros(logits.shape[0], 2, dtype=torch.long, device=logits.device)
            second_active = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
            weights = torch.cat([probs, torch.zeros_like(probs)], dim=-1)
            return RoutingDecision(probs, expert_index, second_active, weights)
        probs = logits.softmax(dim=-1)
        expert_index, second_active = select_experts(
            probs, gating=self.config.gating, threshold=self.config.threshold, threshold_on=self.config.threshold_on
        )
        weights = combine_weights(probs, expert_index, second_active, combine=self.config.combine)
        return RoutingDecision(probs, expert_index, second_active, weights)
