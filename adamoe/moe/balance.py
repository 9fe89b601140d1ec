"""The routers' auxiliary losses, as pure functions of one layer's router outputs: the load-balancing loss of the
paper's Eq. 4, and the entropy loss that top-p routing trains with.

    loss = E * sum_e f_e * P_e

with `f_e` the share of first-choice assignments that go to expert e (a count: no gradient) and `P_e`
the mean gate probability of e (the differentiable part), both over non-padding tokens only. Only
first choices count in `f_e`, as in Switch Transformer, because the second choice of adaptive gating is
taken by a minority of tokens that changes with T; counting it would make the loss's minimum depend on T.
"""

from __future__ import annotations

import torch


def load_balancing_loss(
    probs: torch.Tensor, first_expert: torch.Tensor, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 4 for one MoE layer.

    Args:
        probs: `(num_tokens, num_experts)` softmax gate probabilities.
        first_expert: `(num_tokens,)` each token's first-choice expert.
        token_mask: `(num_tokens,)` bool, False on padding; None when every token is real.

    Returns:
        A scalar; 1.0 when both the assignments and the probabilities are uniform.

    Example:
        ```python
        >>> probs = torch.full((4, 2), 0.5)
        >>> load_balancing_loss(probs, torch.tensor([0, 1, 0, 1]))
        tensor(1.)
        ```
    """
    num_experts = probs.shape[-1]
    # Weights instead of boolean indexing: same result, and no device-to-host sync for the shape.
    weight = torch.ones_like(first_expert, dtype=probs.dtype) if token_mask is None else token_mask.to(probs.dtype)
    num_real = weight.sum().clamp_min(1.0)
    assignment_share = torch.zeros(num_experts, dtype=probs.dtype, device=probs.device)
    assignment_share = assignment_share.index_add_(0, first_expert, weight) / num_real  # (num_experts,) f_e
    mean_prob = (probs * weight.unsqueeze(-1)).sum(0) / num_real  # (num_experts,) P_e
    return num_experts * (assignment_share * mean_prob).sum()


def router_entropy_loss(probs: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The mean entropy of the gate distributions over non-padding tokens, `-sum_e p_e log p_e`.

    Huang et al. (2024) add it beside the balance loss when routing by top-p: a top-p token takes experts until
    they hold p of its probability, so a flat router would send every token to many experts; minimising the
    entropy sharpens the router and lets the easy tokens take one.

    Args:
        probs: `(num_tokens, num_experts)` softmax gate probabilities.
        token_mask: `(num_tokens,)` bool, False on padding; None when every token is real.

    Returns:
        A scalar in [0, log(num_experts)]: 0 for one-hot gates, log(num_experts) for uniform ones.

    Example:
        ```python
        >>> router_entropy_loss(torch.full((3, 4), 0.25))   # log 4
        tensor(1.3863)
        ```
    """
    # xlogy: 0 * log 0 = 0, so a gate that is exactly 0 adds nothing instead of NaN.
    entropy = -torch.special.xlogy(probs, probs).sum(-1)  # (num_tokens,)
    weight = torch.ones_like(entropy) if token_mask is None else token_mask.to(entropy.dtype)
    return (entropy * weight).sum() / weight.sum().clamp_min(1.0)
