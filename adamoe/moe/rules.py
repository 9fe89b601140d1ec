"""Dynamic-k routing rules: which of a token's top-k_max experts it uses, as a choice among pure functions.

The paper leaves open how adaptive gating compares with other rules that give a token a variable number of
experts. Each rule here is one pure function of a token's gate probabilities, sorted in decreasing order, and
one parameter (the config's `threshold`); it returns the active slots, always a prefix that holds the first
choice, so every rule runs through the same dispatch (cost follows the active pairs) and the same statistics:

- `gap`, the paper's adaptive gating (Li et al., 2023): each further expert i while the gap between p1 and
  p_i is at most T, normalised `(p1 - p_i) / (p1 + p_i)` or raw `p1 - p_i` (`threshold_on`). T = 0: top-1 (but
  for exact ties); T = 1: top-k_max.
- `top_p` (Huang et al., "Harder Tasks Need More Experts", ACL 2024): experts in decreasing probability until
  their cumulative probability reaches p, capped at k_max. p = 0: top-1; p = 1: top-k_max (unless the first
  experts already hold all the probability).

Both grow monotonically with their parameter, so a larger value never takes an expert away from a token.

```python
active = RULES["top_p"](top_probs, threshold=0.6, threshold_on="normalized")   # (num_tokens, k_max) bool
```
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Rule = Callable[..., torch.Tensor]


def gap_rule(top_probs: torch.Tensor, *, threshold: float, threshold_on: str = "normalized") -> torch.Tensor:
    """`(num_tokens, k_max)` sorted probabilities -> `(num_tokens, k_max)` bool: slot i while gap(p1, p_i) <= T."""
    p1 = top_probs[:, :1]  # (num_tokens, 1)
    gap = p1 - top_probs  # (num_tokens, k_max)
    if threshold_on == "normalized":
        # p1 + p_i > 0 always (softmax), and the normalised gap stays in [0, 1] however many experts.
        gap = gap / (p1 + top_probs)
    return gap <= threshold


def top_p_rule(top_probs: torch.Tensor, *, threshold: float, threshold_on: str = "normalized") -> torch.Tensor:
    """`(num_tokens, k_max)` sorted probabilities -> `(num_tokens, k_max)` bool: slot i while the probability of
    the slots before it is below p (so the experts taken are the fewest whose probability reaches p)."""
    before = top_probs.cumsum(dim=-1) - top_probs  # (num_tokens, k_max): probability of the slots before i
    return before < threshold


# Rule name -> the function; `MoEConfig.rule` names one (config.RULE_NAMES lists the same names).
RULES: dict[str, Rule] = {"gap": gap_rule, "top_p": top_p_rule}


def active_slots(top_probs: torch.Tensor, *, rule: str, threshold: float, threshold_on: str) -> torch.Tensor:
    """The rule's active slots as a prefix that always holds the first choice.

    "While": a token stops at its first slot the rule leaves out, so the result is a prefix even for a rule (or
    numerics) that would skip a slot and take a later one; the top-1 expert is used whatever the parameter.
    """
    active = RULES[rule](top_probs, threshold=threshold, threshold_on=threshold_on)
    active = active.cumprod(dim=-1).bool()
    active[:, 0] = True
    return active
