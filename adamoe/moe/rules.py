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

- `expert_threshold` (Sun et al., "Expert Threshold Routing", 2026): each further expert whose probability
  reaches that expert's own threshold, a moving average (`ema_step`) of the score above which it would take its
  share `capacity / num_experts` of the tokens. The decision for a token depends on no other token of the batch
  (causal), and balance comes from the thresholds instead of an auxiliary loss. Unlike the paper, a token here
  always keeps its top-1 expert and takes at most k_max; both bend the mean away from the capacity (a token that
  reaches no threshold still takes one expert), so the capacity is steered towards `target_experts` by the same
  controller as the other rules' parameter, starting at the target itself.

All grow monotonically with their parameter, so a larger value never takes an expert away from a token (for
`expert_threshold` the parameter is the per-slot threshold itself: a lower threshold never takes one away).

Steering towards a budget (`target_experts` with `gap` or `top_p`): DTop-p (Jin et al., 2025) holds the mean
number of experts per token at a target by moving the parameter with a proportional-integral controller
(`controller_step`), here started at the parameter that meets the target on the first training step's tokens
(`calibrated_parameter`). Rules stay pure: the steered parameter and the moving averages are router buffers that
change only in `Router.update_state`, once per training micro-batch after its backward, never inside a forward
(a forward recomputed by activation checkpointing must route as the first one did).

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


def expert_threshold_rule(
    top_probs: torch.Tensor, *, threshold: torch.Tensor, threshold_on: str = "normalized"
) -> torch.Tensor:
    """`(num_tokens, k_max)` sorted probabilities and `(num_tokens, k_max)` thresholds, each slot's expert's own
    (`Router` gathers them) -> `(num_tokens, k_max)` bool: slot i while its probability reaches its threshold."""
    return top_probs >= threshold


# Rule name -> the function; `MoEConfig.rule` names one (config.RULE_NAMES lists the same names).
RULES: dict[str, Rule] = {"gap": gap_rule, "top_p": top_p_rule, "expert_threshold": expert_threshold_rule}


def active_slots(top_probs: torch.Tensor, *, rule: str, threshold: float, threshold_on: str) -> torch.Tensor:
    """The rule's active slots as a prefix that always holds the first choice.

    "While": a token stops at its first slot the rule leaves out, so the result is a prefix even for a rule (or
    numerics) that would skip a slot and take a later one; the top-1 expert is used whatever the parameter.
    """
    active = RULES[rule](top_probs, threshold=threshold, threshold_on=threshold_on)
    active = active.cumprod(dim=-1).bool()
    active[:, 0] = True
    return active


def controller_step(
    state: torch.Tensor, measured: torch.Tensor, *, target: float, gains: tuple[float, float], cap: float = 1.0
) -> torch.Tensor:
    """One step of the proportional-integral controller that steers a rule's parameter towards a budget.

    The controller works on the parameter's logarithm: `parameter = start * exp(kp * error + ki * summed error)`.
    How far the parameter must move to add an expert scales with the parameter itself: a flat router (the paper
    configs' init std 0.02) reaches 1.25 experts a token at T near 0.001, a confident one at T near 0.3, and a
    step in absolute units that suits one makes the other jump between top-1 and top-2 (measured on the smoke kit).

    Args:
        state: `(3,)` float32 `[parameter, summed error, start]`, the router's `controller` buffer once calibrated
            (`calibrated_parameter` gives the start).
        measured: 0-dim, the mean number of experts per real token of the step just taken.
        target: the mean number of experts per token aimed at.
        gains: `(kp, ki)`, per expert of error, in units of the parameter's logarithm.
        cap: the parameter's largest value: 1 for gap's T and top-p's p; k_max for expert-threshold's capacity.

    Returns:
        The new `(3,)` state, the parameter at most `cap`; the summed error stops growing while the cap holds
        (anti-windup), so the controller answers at once when the error changes sign.
    """
    kp, ki = gains
    start = state[2]
    error = target - measured.to(state.dtype)
    summed = state[1] + error
    unclamped = start * torch.exp(kp * error + ki * summed)
    parameter = unclamped.clamp(max=cap)
    saturated = (unclamped > cap) & (error > 0)  # pushing further into the cap
    summed = torch.where(saturated, state[1], summed)
    return torch.stack([parameter, summed, start])


def calibrated_parameter(mean_experts: Callable[[float], float], target: float, *, steps: int = 30) -> float:
    """The smallest parameter in [0, 1] at which `mean_experts(parameter)` reaches `target`, by bisection (every rule
    grows monotonically with its parameter); 1 if none does.

    The controller's start: a fine-tuning run of a few hundred steps cannot spend its first tens on the controller's
    transient, so the first training step sets the parameter that meets the budget on that step's own tokens, and
    the controller only follows the drift from there.
    """
    low, high = 0.0, 1.0
    if mean_experts(high) < target:
        return high
    if mean_experts(low) >= target:
        return low
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (low, middle) if mean_experts(middle) >= target else (middle, high)
    return high


def ema_step(
    thresholds: torch.Tensor, probs: torch.Tensor, token_mask: torch.Tensor | None, *, target: float, decay: float
) -> torch.Tensor:
    """One moving-average step of expert-threshold routing's per-expert thresholds.

    Args:
        thresholds: `(num_experts,)` the current thresholds; NaN where none has been estimated yet.
        probs: `(num_tokens, num_experts)` gate probabilities of the step just taken.
        token_mask: `(num_tokens,)` bool, False on padding (left out); None when every token is real.
        target: mean experts per token aimed at, so each expert expects `target / num_experts` of the tokens.
        decay: weight of the old threshold, in [0, 1).

    Returns:
        `(num_experts,)`: each expert's threshold moved towards this step's score of its c-th most likely token,
        c = the expert's expected share of this step's real tokens (at least one); a NaN one starts there.
    """
    dtype = torch.promote_types(thresholds.dtype, torch.float32)  # never the averages in bf16
    real = probs.detach().to(dtype) if token_mask is None else probs.detach().to(dtype)[token_mask]
    num_tokens, num_experts = real.shape
    if num_tokens == 0:
        return thresholds
    capacity = min(num_tokens, max(1, round(num_tokens * target / num_experts)))
    step = real.topk(capacity, dim=0).values[-1]  # (num_experts,): the capacity-th largest score of each expert
    old = thresholds.to(dtype)
    moved = decay * old + (1.0 - decay) * step
    return torch.where(torch.isnan(old), step, moved).to(thresholds.dtype)
