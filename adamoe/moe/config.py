"""`MoEConfig`: how the feed-forward blocks of a model become adaptive-gated mixture-of-experts blocks.

The config is a dataclass validated on creation and serialised into the patched checkpoint's
`config.json` (under the key `adamoe`), so `save_pretrained`, Trainer checkpoints and `push_to_hub`
carry it without anything extra and `adamoe.from_pretrained` can rebuild the same structure.

Three fields default to None, "from the model": `num_experts`, `top_k` and `combine`. A native MoE model
(Mixtral, Qwen-MoE, OLMoE) has its own expert count, top-k and renormalisation, and `moeify` keeps them; a
dense model gets the toolkit's defaults (`DENSE_DEFAULTS`: 16 experts, k_max 2, renormalised). `resolve`
fills them in, and the config that `moeify` stores in the checkpoint always has them filled.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

GATINGS = ("adaptive", "top1", "top2", "topk")
RULE_NAMES = ("gap", "top_p", "expert_threshold")  # the adaptive rules of rules.RULES
THRESHOLD_ON = ("normalized", "raw")
COMBINES = ("normalized", "gate")
EXPERT_INITS = ("upcycle", "random")
DISPATCHES = ("auto", "grouped_mm", "loop")
MAX_EXPERTS = 1024

# The fields that decide which parameters exist. Two configs that differ here describe different
# checkpoints; the other fields only change how tokens are routed and can be changed on a trained model.
STRUCTURAL_FIELDS = ("num_experts", "num_null_experts", "layers", "every_n_layers")
# Fields read only when the experts are first created; they mean nothing for a trained checkpoint.
INIT_FIELDS = ("expert_init", "upcycle_noise", "router_init_std")
# What the fields left None ("from the model") become on a dense model: the paper's 16 experts and k_max 2.
DENSE_DEFAULTS = {"num_experts": 16, "top_k": 2, "combine": "normalized"}
FROM_MODEL_FIELDS = tuple(DENSE_DEFAULTS)


# The key under which a checkpoint's `adamoe` entry records the adamoe version that wrote it.
VERSION_KEY = "adamoe_version"


class MoEConfigError(ValueError):
    """A `MoEConfig` value is out of range or inconsistent."""


def _number(name: str, value: Any) -> float:
    """`value` as a float, or a `MoEConfigError` naming the field (a YAML word where a number belongs)."""
    if isinstance(value, bool):
        raise MoEConfigError(f"{name} must be a number, got {value!r}.")
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise MoEConfigError(f"{name} must be a number, got {value!r}.") from err


@dataclass(frozen=True)
class MoEConfig:
    """Configuration of the mixture-of-experts blocks that `adamoe.moeify` puts in place of FFNs.

    Example:
        ```python
        >>> import adamoe
        >>> cfg = adamoe.MoEConfig(num_experts=8, gating="adaptive", threshold=0.1)
        >>> cfg.to_dict()["threshold"]
        0.1
        ```
    """

    num_experts: int | None = field(
        default=None,
        metadata={
            "help": "Experts per MoE layer. None: a native MoE model's own count, else 16 (the paper's). On a "
            "native MoE any other count is an error: its pretrained experts are kept."
        },
    )
    num_null_experts: int = field(
        default=0,
        metadata={
            "help": "Null experts per MoE layer (AdaMoE 2024; take-until-null): router outputs for experts that "
            "compute nothing. A token always uses its most likely real expert; each further slot of its top_k "
            "that the router gives to a null expert ends its list, so the slots cost only where a real expert "
            "wins them. 0: none. Changes which parameters exist (the router's rows)."
        },
    )
    gating: Literal["adaptive", "top1", "top2", "topk"] = field(
        default="adaptive",
        metadata={
            "help": "'adaptive': the top-1 expert, plus each further expert of the top_k (in order of gate "
            "probability) while its gap to the top-1 probability is <= threshold; 'top1'/'top2'/'topk': always "
            "one/two/top_k experts."
        },
    )
    top_k: int | None = field(
        default=None,
        metadata={
            "help": "k_max, the most experts a token can use. None: a native MoE model's own top-k, else 2 (the "
            "paper's rule). Adaptive gating uses between 1 and top_k; gating='topk' always top_k. Changes routing "
            "only, not which parameters exist."
        },
    )
    rule: Literal["gap", "top_p", "expert_threshold"] = field(
        default="gap",
        metadata={
            "help": "The adaptive rule: 'gap' (the paper's: each further expert while its gap to the top-1 "
            "probability is <= threshold), 'top_p' (experts in decreasing probability until their cumulative "
            "probability reaches threshold, Huang et al. 2024) or 'expert_threshold' (each expert whose "
            "probability reaches that expert's moving-average threshold, Sun et al. 2026; needs target_experts); "
            "see adamoe/moe/rules.py. Routing only."
        },
    )
    threshold: float = field(
        default=0.1,
        metadata={
            "help": "The adaptive rule's parameter in [0, 1]: T of the gap rule (0: only exact ties add an "
            "expert; 1: every token uses top_k), p of top_p (0: top-1; 1: top_k)."
        },
    )
    threshold_on: Literal["normalized", "raw"] = field(
        default="normalized",
        metadata={
            "help": "Which gap T is compared with: 'normalized' (p1 - p_i) / (p1 + p_i), or 'raw' p1 - p_i, where "
            "p1 is the largest softmax gate probability and p_i the i-th largest (i = 2..top_k)."
        },
    )
    target_experts: float | None = field(
        default=None,
        metadata={
            "help": "A target mean number of experts per token in [1, top_k], per layer. With 'gap' or 'top_p' a "
            "proportional-integral controller steers each layer's parameter towards it during training (DTop-p), "
            "starting from threshold; with 'expert_threshold' it sets each expert's share of the tokens. The "
            "steered values are router buffers, saved with the weights (and kept, unused, while gating is not "
            "adaptive). None: the parameter stays as given."
        },
    )
    controller_gains: tuple[float, float] = field(
        default=(2.0, 0.5),
        metadata={
            "help": "(kp, ki) of the target controller, which works on the parameter's logarithm: the parameter is "
            "its calibrated start times exp(kp * error + ki * error summed over the steps so far), error in experts "
            "per token (see adamoe/moe/rules.py)."
        },
    )
    ema_decay: float = field(
        default=0.9,
        metadata={
            "help": "Decay of expert_threshold's moving averages per training step, in [0, 1). 0.9 forgets in tens "
            "of steps, as a fine-tuning run of hundreds needs (pretraining runs use 0.99 and more)."
        },
    )
    entropy_loss_coef: float = field(
        default=0.0,
        metadata={
            "help": "Coefficient of the router entropy loss (Huang et al.'s dynamic loss beside top-p: sharper "
            "routers take fewer experts); added with the balance loss in training. 0 disables it; they use 1e-4."
        },
    )
    combine: Literal["normalized", "gate"] | None = field(
        default=None,
        metadata={
            "help": "'gate': weight each selected expert's output by its gate probability (paper Eq. 3); "
            "'normalized': renormalise the weights over the selected experts, so a one-expert token gets "
            "exactly its expert's output. None: a native MoE model's own convention (Mixtral, or "
            "norm_topk_prob=True: normalized; else gate), 'normalized' on a dense model."
        },
    )
    expert_init: Literal["upcycle", "random"] = field(
        default="upcycle",
        metadata={
            "help": "'upcycle': each expert starts as a copy of the pretrained FFN; 'random': fresh init (paper)."
        },
    )
    upcycle_noise: float = field(
        default=0.0,
        metadata={"help": "Std of relative Gaussian noise added to upcycled expert weights (0 = exact copies)."},
    )
    router_init_std: float = field(
        default=0.1,
        metadata={
            "help": "Std of the router weight initialisation. It sets how sure the router starts: with 0.02 "
            "(transformers' initializer_range) the gate logits of layer-normed hidden states are so flat that "
            "most tokens fall within T = 0.1 and take two experts; 0.1 starts about a fifth there. Upcycled experts "
            "with the normalized combine give the dense output whatever the routing, so a surer start costs "
            "no quality there and saves compute from the first step (docs/design.md). The paper configs keep 0.02."
        },
    )
    aux_loss_coef: float = field(
        default=0.01, metadata={"help": "Coefficient of the load-balancing loss (paper Eq. 4); 0 disables it."}
    )
    layers: str | list[int] = field(
        default="all",
        metadata={"help": "'all' FFNs, or a list of layer indices (counted within each stack) to convert."},
    )
    every_n_layers: int = field(
        default=1,
        metadata={"help": "Convert every n-th FFN (layers n-1, 2n-1, ... of each stack); only with layers='all'."},
    )
    dispatch: Literal["auto", "grouped_mm", "loop"] = field(
        default="auto",
        metadata={
            "help": "Expert computation: 'grouped_mm' (one grouped GEMM over the token-expert pairs), 'loop' "
            "(one GEMM per expert over its own tokens), 'auto' (grouped_mm where torch supports it)."
        },
    )

    def __post_init__(self) -> None:
        self._check_choice("gating", GATINGS)
        self._check_choice("rule", RULE_NAMES)
        self._check_choice("threshold_on", THRESHOLD_ON)
        if self.combine is not None:
            self._check_choice("combine", COMBINES)
        self._check_choice("expert_init", EXPERT_INITS)
        self._check_choice("dispatch", DISPATCHES)
        if self.num_experts is not None:
            if isinstance(self.num_experts, bool) or not isinstance(self.num_experts, int):
                raise MoEConfigError(f"num_experts must be an integer, got {self.num_experts!r}.")
            if not 1 <= self.num_experts <= MAX_EXPERTS:
                raise MoEConfigError(f"num_experts must be between 1 and {MAX_EXPERTS}, got {self.num_experts}.")
            if self.gating != "top1" and self.num_experts < 2:
                raise MoEConfigError(
                    f"gating={self.gating!r} can send a token to two experts, so it needs num_experts >= 2 "
                    f"(got {self.num_experts}). Use gating='top1' for a single expert."
                )
        if self.top_k is not None:
            if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
                raise MoEConfigError(
                    f"top_k must be an integer >= 1 (the most experts a token can use), got {self.top_k!r}."
                )
            # A single-expert block (gating='top1') routes every token to that expert whatever top_k says, so the
            # default 2 stays valid there.
            if self.num_experts is not None and self.num_experts > 1 and self.top_k > self.num_experts:
                raise MoEConfigError(
                    f"top_k={self.top_k} exceeds num_experts={self.num_experts}: a token cannot use more experts "
                    f"than the layer has. Lower top_k to at most {self.num_experts}, or raise num_experts."
                )
            if self.gating == "top2" and self.top_k < 2:
                raise MoEConfigError(
                    f"gating='top2' sends every token to two experts, so it needs top_k >= 2 (got {self.top_k}). "
                    "Use gating='top1', or gating='topk' for a fixed top_k."
                )
        if (
            isinstance(self.num_null_experts, bool)
            or not isinstance(self.num_null_experts, int)
            or not 0 <= self.num_null_experts <= MAX_EXPERTS
        ):
            raise MoEConfigError(
                f"num_null_experts must be an integer between 0 and {MAX_EXPERTS}, got {self.num_null_experts!r}."
            )
        if self.num_null_experts and self.rule == "expert_threshold":
            raise MoEConfigError(
                "rule='expert_threshold' keeps a threshold per real expert and has none for null experts; use "
                "num_null_experts=0 with it, or another rule (gap, top_p) with null experts."
            )
        threshold = _number("threshold", self.threshold)
        if not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0:
            raise MoEConfigError(
                f"threshold must be in [0, 1], got {self.threshold!r}: the gap between two gate probabilities "
                "lies in [0, 1], so T = 1 already sends every token to top_k experts."
            )
        object.__setattr__(self, "threshold", threshold)  # frozen: normalised once, here
        self._check_rule_state()
        for name in ("upcycle_noise", "router_init_std", "aux_loss_coef", "entropy_loss_coef"):
            value = _number(name, getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise MoEConfigError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}.")
            object.__setattr__(self, name, value)
        if isinstance(self.layers, str):
            if self.layers != "all":
                raise MoEConfigError(f"layers must be 'all' or a list of layer indices, got {self.layers!r}.")
        else:
            layers = list(self.layers)
            if not layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
                raise MoEConfigError(f"layers must be a non-empty list of layer indices >= 0, got {self.layers!r}.")
            object.__setattr__(self, "layers", sorted(set(layers)))
        if (
            isinstance(self.every_n_layers, bool)
            or not isinstance(self.every_n_layers, int)
            or self.every_n_layers < 1
        ):
            raise MoEConfigError(f"every_n_layers must be an integer >= 1, got {self.every_n_layers!r}.")
        if self.every_n_layers != 1 and self.layers != "all":
            raise MoEConfigError("Give either layers=[...] or every_n_layers, not both.")

    def _check_rule_state(self) -> None:
        """The target controller's and expert-threshold's settings (see `target_experts`)."""
        gains = self.controller_gains
        if isinstance(gains, str) or not hasattr(gains, "__len__") or len(gains) != 2:
            raise MoEConfigError(f"controller_gains must be two numbers (kp, ki), got {gains!r}.")
        gains = tuple(_number("controller_gains", g) for g in gains)
        if not all(math.isfinite(g) and g >= 0 for g in gains):
            raise MoEConfigError(f"controller_gains must be two finite numbers >= 0 (kp, ki), got {gains!r}.")
        object.__setattr__(self, "controller_gains", gains)  # a YAML or JSON list becomes the tuple
        decay = _number("ema_decay", self.ema_decay)
        if not 0.0 <= decay < 1.0:
            raise MoEConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}.")
        object.__setattr__(self, "ema_decay", decay)
        if self.target_experts is None:
            if self.rule == "expert_threshold":
                raise MoEConfigError(
                    "rule='expert_threshold' needs target_experts, the mean number of experts per token its "
                    "thresholds aim at (each expert then expects target_experts / num_experts of the tokens)."
                )
            return
        target = _number("target_experts", self.target_experts)
        # top_k None ("from the model") is checked again once `resolve` fills it in.
        k_max = self.top_k if self.top_k is not None else MAX_EXPERTS
        if not math.isfinite(target) or not 1.0 <= target <= k_max:
            raise MoEConfigError(
                f"target_experts must be in [1, top_k] = [1, {self.top_k}] (a token uses between 1 and top_k "
                f"experts), got {self.target_experts!r}."
            )
        object.__setattr__(self, "target_experts", target)

    def _check_choice(self, name: str, choices: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in choices:
            raise MoEConfigError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")

    def converts_layer(self, index: int) -> bool:
        """Whether the FFN of layer `index` (counted within its stack) becomes an MoE block."""
        if self.layers != "all":
            return index in self.layers
        return index % self.every_n_layers == self.every_n_layers - 1

    def resolve(self, **from_model: Any) -> MoEConfig:
        """This config with its None ("from the model") fields filled: from `from_model` (a native MoE's own
        `num_experts`, `top_k`, `combine`), else `DENSE_DEFAULTS`; validated again. Set fields stay as they are.

        Example:
            ```python
            >>> MoEConfig().resolve().num_experts, MoEConfig().resolve(num_experts=8, top_k=2).num_experts
            (16, 8)
            ```
        """
        unknown = set(from_model) - set(FROM_MODEL_FIELDS)
        if unknown:
            raise TypeError(f"resolve() takes only {', '.join(FROM_MODEL_FIELDS)}; got {sorted(unknown)}.")
        filled = {
            name: from_model.get(name) if from_model.get(name) is not None else DENSE_DEFAULTS[name]
            for name in FROM_MODEL_FIELDS
            if getattr(self, name) is None
        }
        return dataclasses.replace(self, **filled) if filled else self

    def filled_from(self, other: MoEConfig) -> MoEConfig:
        """This config with its None fields taken from `other` (a checkpoint's stored config)."""
        filled = {name: getattr(other, name) for name in FROM_MODEL_FIELDS if getattr(self, name) is None}
        return dataclasses.replace(self, **filled)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MoEConfig:
        values = {k: v for k, v in values.items() if k != VERSION_KEY}  # provenance, not a setting
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MoEConfigError(
                f"Unknown MoEConfig field(s) {unknown}; known fields are {sorted(known)}. "
                "Was this checkpoint written by a newer adamoe?"
            )
        return cls(**values)

    def structural_differences(self, other: MoEConfig) -> dict[str, tuple[Any, Any]]:
        """Fields that change which parameters exist, as {field: (self value, other value)}.

        A field left None ("from the model") on either side agrees with any value.
        """
        return {
            name: (getattr(self, name), getattr(other, name))
            for name in STRUCTURAL_FIELDS
            if None not in (getattr(self, name), getattr(other, name)) and getattr(self, name) != getattr(other, name)
        }

    def routing_differences(self, other: MoEConfig) -> dict[str, tuple[Any, Any]]:
        """Fields that only change routing or training, as {field: (self value, other value)}; None agrees with
        any value, as in `structural_differences`."""
        mine, theirs = self.to_dict(), other.to_dict()
        skip = STRUCTURAL_FIELDS + INIT_FIELDS
        return {
            k: (mine[k], theirs[k])
            for k in mine
            if k not in skip and None not in (mine[k], theirs[k]) and mine[k] != theirs[k]
        }
