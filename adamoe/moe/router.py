"""The router: the only place that knows the gating rule and the threshold T.

Adaptive gating (Li et al., 2023, §3.1), generalised to at most k_max = `top_k` experts: with
p1 >= p2 >= ... the gate probabilities of a token in decreasing order, the token always goes to its top-1
expert, and to each further expert i = 2..k_max while the router is unsure between it and the first, i.e.
while the gap between p1 and p_i is at most T. Since p_i only decreases with i, so does the confidence, and
the experts a token uses are always a prefix of its top-k_max. With k_max = 2 this is the paper's rule. The
router runs in float32 whatever the autocast dtype: the decision compares probabilities that differ by a
few percent, which bf16's 8-bit mantissa blurs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .config import MoEConfig
from .rules import active_slots, calibrated_parameter, controller_step, ema_step


class RouterNumericsError(FloatingPointError):
    """A router produced NaN or infinite logits: training further would only learn from garbage."""


class RoutingStateError(RuntimeError):
    """A rule that keeps state (expert-threshold's moving averages) routed before any was estimated or loaded."""


@dataclass
class RoutingDecision:
    """Where each token goes, as the router decided it in one forward pass.

    Attributes:
        probs: `(num_tokens, num_experts + num_null)` float32 softmax gate probabilities, null experts last.
        expert_index: `(num_tokens, k_max)` long, each token's experts in decreasing gate probability (with null
            experts: the most likely real expert first; an index >= num_experts is a null expert, never active).
        active: `(num_tokens, k_max)` bool, which of those the token uses: always a prefix, the first always.
        combine_weights: `(num_tokens, k_max)` weights of the choices in the output (0 where inactive).
        token_mask: `(num_tokens,)` bool, False on padding; None when every token is real.
        batch_shape: `(batch, seq_len)`, to read per-sample statistics back out of the flat token axis.
        num_null: null experts the router scores beside the real ones (`MoEConfig.num_null_experts`).
    """

    probs: torch.Tensor
    expert_index: torch.Tensor
    active: torch.Tensor
    combine_weights: torch.Tensor
    token_mask: torch.Tensor | None = None
    batch_shape: tuple[int, int] | None = None
    num_null: int = 0

    @property
    def expert_probs(self) -> torch.Tensor:
        """`(num_tokens, num_experts)`: the real experts' probabilities, renormalised over them when the router also
        scores null experts (the last `num_null` columns of `probs`); `probs` itself otherwise."""
        if not self.num_null:
            return self.probs
        real = self.probs[:, : self.probs.shape[-1] - self.num_null]
        return real / real.sum(-1, keepdim=True)

    @property
    def top_k(self) -> int:
        """k_max: the most experts a token could use."""
        return self.expert_index.shape[1]

    @property
    def num_selected(self) -> torch.Tensor:
        """`(num_tokens,)` long: how many experts each token uses, 1..k_max."""
        return self.active.sum(-1)

    @property
    def second_active(self) -> torch.Tensor:
        """`(num_tokens,)` bool: whether the token uses more than one expert (its second choice is active)."""
        if self.top_k < 2:
            return torch.zeros_like(self.active[:, 0])
        return self.active[:, 1]


def select_top_k(
    probs: torch.Tensor,
    *,
    gating: str,
    threshold: float | torch.Tensor,
    threshold_on: str = "normalized",
    top_k: int = 2,
    rule: str = "gap",
    expert_thresholds: torch.Tensor | None = None,
    num_null: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the gating rule with at most `top_k` experts per token.

    Args:
        probs: `(num_tokens, num_experts)` softmax gate probabilities, `num_experts >= top_k`.
        gating: "adaptive", "top1", "top2" or "topk".
        threshold: the rule's parameter (T of the gap rule, p of top-p), a float or a 0-dim tensor (a steered
            one); any value is accepted here (T < 0: only the top-1 expert, T >= 1: all top_k).
        threshold_on: "normalized" compares (p1 - p_i) / (p1 + p_i) with T, "raw" compares p1 - p_i (gap rule).
        top_k: k_max, the width of the returned tensors.
        rule: the adaptive rule, a key of `rules.RULES` ("gap", the paper's, "top_p" or "expert_threshold").
        expert_thresholds: `(num_experts,)` each expert's own threshold, for "expert_threshold" only.
        num_null: the last `num_null` columns of `probs` are null experts (take until null, see `MoEConfig`).

    Returns:
        `expert_index` `(num_tokens, top_k)` in decreasing gate probability, and `active` `(num_tokens, top_k)`
        bool, a prefix of each row that always holds the first choice.
    """
    if num_null:
        top_probs, expert_index = _top_k_with_null_experts(probs, top_k, num_null)
    else:
        top_probs, expert_index = probs.topk(top_k, dim=-1)  # (num_tokens, top_k) each, decreasing
    slot = torch.arange(top_k, device=probs.device)  # (top_k,)
    if gating == "top1":
        active = (slot < 1).expand_as(expert_index)
    elif gating == "top2":
        active = (slot < 2).expand_as(expert_index)
    elif gating == "topk":
        active = torch.ones_like(expert_index, dtype=torch.bool)
    elif gating == "adaptive":
        if rule == "expert_threshold":
            threshold = expert_thresholds[expert_index]  # (num_tokens, top_k): each slot's expert's own
        active = active_slots(top_probs, rule=rule, threshold=threshold, threshold_on=threshold_on)
    else:
        raise ValueError(f"Unknown gating {gating!r}.")
    if num_null:
        # Take until null: a slot won by a null expert costs nothing and ends the token's list.
        real = expert_index < probs.shape[-1] - num_null  # (num_tokens, top_k)
        active = (active & real).cumprod(dim=-1).bool()
    return expert_index, active.contiguous()


def _top_k_with_null_experts(probs: torch.Tensor, top_k: int, num_null: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(num_tokens, top_k)` probabilities and indices: the most likely real expert, then the top_k - 1 most likely
    of all the others, real or null (the last `num_null` columns of `probs`), in decreasing probability."""
    first = probs[:, : probs.shape[-1] - num_null].argmax(dim=-1, keepdim=True)  # (num_tokens, 1)
    others = probs.scatter(-1, first, -1.0)  # the first can not win a second slot
    rest_probs, rest_index = others.topk(top_k - 1, dim=-1)  # (num_tokens, top_k - 1)
    return torch.cat([probs.gather(-1, first), rest_probs], dim=-1), torch.cat([first, rest_index], dim=-1)


def select_experts(
    probs: torch.Tensor, *, gating: str, threshold: float, threshold_on: str = "normalized"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule with k_max = 2, in the paper's terms.

    Args:
        probs: `(num_tokens, num_experts)` softmax gate probabilities.
        gating: "adaptive", "top1", "top2" or "topk" (= "top2" here).
        threshold: T; any float is accepted here (T < 0: never two experts, T >= 1: always).
        threshold_on: "normalized" compares (p1 - p2) / (p1 + p2) with T, "raw" compares p1 - p2.

    Returns:
        `expert_index` `(num_tokens, 2)` and `second_active` `(num_tokens,)` bool.
    """
    expert_index, active = select_top_k(probs, gating=gating, threshold=threshold, threshold_on=threshold_on, top_k=2)
    return expert_index, active[:, 1]


def combine_weights(
    probs: torch.Tensor, expert_index: torch.Tensor, active: torch.Tensor, *, combine: str
) -> torch.Tensor:
    """Output weights of the choices of each token, `(num_tokens, k)`, 0 for an unused choice.

    `active` is `(num_tokens, k)` bool, or, for a two-expert routing, the `(num_tokens,)` second-choice flag.

    "gate" is the paper's Eq. 3: each selected expert weighted by its gate probability. "normalized"
    divides by the sum over the selected experts. For a one-expert token that sum is p1 itself, so the
    weight p1 / p1 would be a constant 1 and the router would get no gradient from the task loss through
    those tokens; dividing by a detached p1 keeps the value exactly 1 and the gradient of p1 (the
    straight-through form also used by Switch-style top-1 routers).
    """
    if active.dim() == 1:
        active = torch.stack([torch.ones_like(active), active], dim=-1)  # (num_tokens, 2)
    selected = probs.gather(-1, expert_index) * active.to(probs.dtype)  # (num_tokens, k)
    if combine == "gate":
        return selected
    if combine != "normalized":
        raise ValueError(f"Unknown combine {combine!r}.")
    total = selected.sum(-1, keepdim=True)  # (num_tokens, 1)
    several = active[:, 1:].any(-1, keepdim=True)  # (num_tokens, 1): more than the first choice
    total = torch.where(several, total, total.detach())
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
        resolved = config.resolve()
        # One row per real expert, then one per null expert.
        self.weight = nn.Parameter(torch.empty(resolved.num_experts + resolved.num_null_experts, hidden_size))
        # `moeify` hands a resolved config; one built by hand gets the dense defaults for its None fields.
        self.config = config.resolve()
        nn.init.normal_(self.weight, std=self.config.router_init_std)

    @property
    def config(self) -> MoEConfig:
        return self._config

    @config.setter
    def config(self, config: MoEConfig) -> None:
        # The buffers a rule keeps follow the config, so `set_routing` adds or drops them, and a checkpoint holds
        # exactly the state its stored config names (loading is strict).
        self._config = config
        self._sync_state()

    def _sync_state(self) -> None:
        """Register the state the config's rule keeps between steps, and drop the state it no longer keeps.

        `controller`: `(3,)` `[steered parameter, summed error, start]` when `target_experts` is set: gap's T or
        top-p's p (NaN until the first training step calibrates them), or expert-threshold's capacity.
        `expert_thresholds`: `(num_experts,)` moving averages of expert-threshold routing, NaN until estimated.
        """
        c = self._config
        wanted = {}
        # Kept under fixed gating too, so `set_routing(gating="top2")` and back again loses nothing.
        if c.target_experts is not None:
            if c.rule == "expert_threshold":
                wanted["expert_thresholds"] = lambda: torch.full((c.num_experts,), float("nan"))
                # The capacity the thresholds aim at, steered: it starts at the target, no calibration needed.
                wanted["controller"] = lambda: torch.tensor([c.target_experts, 0.0, c.target_experts])
            else:
                wanted["controller"] = lambda: torch.tensor([float("nan"), 0.0, float("nan")])
        # A state means one rule's parameter (gap's T is not top-p's p, nor a capacity): a new rule starts afresh.
        rule_changed = getattr(self, "_state_rule", c.rule) != c.rule
        self._state_rule = c.rule
        for name in ("controller", "expert_thresholds"):
            if name in self._buffers and (name not in wanted or rule_changed):
                del self._buffers[name]
            if name in wanted and name not in self._buffers:
                self.register_buffer(name, wanted[name]().to(self.weight.device))

    @property
    def threshold(self) -> float | torch.Tensor:
        """The rule's parameter now: the steered one (a 0-dim tensor) under a target, else the config's."""
        controller = self._buffers.get("controller")
        if controller is None or self.config.rule == "expert_threshold":  # there it steers the capacity
            return self.config.threshold
        # Before the first training step calibrates it: the config's (no host sync to find out which).
        return torch.where(torch.isnan(controller[0]), self.config.threshold, controller[0])

    @torch.no_grad()
    def update_state(self, routing: RoutingDecision) -> None:
        """Move the rule's state by one training step, from the routing of the forward just taken.

        Called once per micro-batch after its backward (`adamoe.update_routing_state`), never in a forward: a
        forward recomputed by activation checkpointing must make the decisions the first one made.
        """
        c = self.config
        if "controller" not in self._buffers:
            return
        per_token = routing.num_selected.float()  # (num_tokens,)
        if routing.token_mask is not None:
            per_token = per_token[routing.token_mask]
        measured = per_token.mean() if per_token.numel() else None  # None: a micro-batch of padding only
        if c.rule == "expert_threshold":
            if measured is not None:
                step = controller_step(self.controller, measured, target=c.target_experts, gains=c.controller_gains,
                                       cap=c.top_k)  # fmt: skip
                self.controller.copy_(step)
            capacity = float(self.controller[0])
            self.expert_thresholds.copy_(
                ema_step(self.expert_thresholds, routing.probs, routing.token_mask, target=capacity, decay=c.ema_decay)
            )
        elif measured is None:
            return
        elif torch.isnan(self.controller[0]):
            start = calibrated_parameter(self._mean_experts_at(routing), c.target_experts)
            self.controller.copy_(torch.tensor([start, 0.0, start]))
        else:
            self.controller.copy_(
                controller_step(self.controller, measured, target=c.target_experts, gains=c.controller_gains)
            )

    def _mean_experts_at(self, routing: RoutingDecision) -> Callable[[float], float]:
        """parameter -> the mean experts per real token of `routing`'s tokens under this router's rule."""
        c = self.config
        probs = routing.probs if routing.token_mask is None else routing.probs[routing.token_mask]

        def mean_experts(parameter: float) -> float:
            _, active = select_top_k(
                probs, gating="adaptive", threshold=parameter, threshold_on=c.threshold_on, top_k=c.top_k,
                rule=c.rule, num_null=c.num_null_experts,
            )  # fmt: skip
            return active.sum(-1).float().mean().item()

        return mean_experts

    def _expert_thresholds(self, probs: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor | None:
        """`(num_experts,)` the thresholds expert-threshold routing compares with; None for the other rules."""
        thresholds = self._buffers.get("expert_thresholds")
        if thresholds is None or self.config.gating != "adaptive":
            return None
        if not torch.isnan(thresholds).any():
            return thresholds
        if not self.training:
            raise RoutingStateError(
                "rule='expert_threshold' routes by thresholds estimated in training, and this router has none: "
                "the checkpoint was not trained with the rule. Fine-tune with --rule expert_threshold (a few "
                "steps estimate them), or evaluate with another rule (gap, top_p)."
            )
        # The first training step: this batch's own estimate on its real tokens, stored by `update_state` after the
        # backward.
        return ema_step(thresholds, probs, token_mask, target=self.config.target_experts, decay=0.0)

    def logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(num_tokens, hidden)` -> `(num_tokens, num_experts)` float32 logits, outside autocast."""
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            return hidden_states.float() @ self.weight.float().t()

    def forward(self, hidden_states: torch.Tensor, token_mask: torch.Tensor | None = None) -> RoutingDecision:
        """`(num_tokens, hidden)` -> the routing of each token; `token_mask` `(num_tokens,)` bool, False on padding
        (None: every token is real), is carried in the decision and kept out of any estimate made from this
        forward's own tokens."""
        logits = self.logits(hidden_states)
        k = self.config.top_k
        if self.config.num_experts == 1 and not self.config.num_null_experts:
            # topk needs k experts; a single expert is the dense FFN with weight 1.
            probs = torch.ones_like(logits) + (logits - logits.detach())
            expert_index = torch.zeros(logits.shape[0], k, dtype=torch.long, device=logits.device)
            active = torch.zeros(logits.shape[0], k, dtype=torch.bool, device=logits.device)
            active[:, 0] = True
            weights = torch.cat([probs, probs.new_zeros(logits.shape[0], k - 1)], dim=-1)
            return RoutingDecision(probs, expert_index, active, weights, token_mask=token_mask)
        probs = logits.softmax(dim=-1)
        expert_index, active = select_top_k(
            probs,
            gating=self.config.gating,
            threshold=self.threshold,
            threshold_on=self.config.threshold_on,
            top_k=k,
            rule=self.config.rule,
            expert_thresholds=self._expert_thresholds(probs, token_mask),
            num_null=self.config.num_null_experts,
        )
        weights = combine_weights(probs, expert_index, active, combine=self.config.combine)
        return RoutingDecision(
            probs, expert_index, active, weights, token_mask=token_mask, num_null=self.config.num_null_experts
        )
