"""Native MoE models (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE): keep their experts, replace the rule and the dispatch.

These models already route every token through softmax gate probabilities to a fixed top-k of their experts.
`moeify` keeps every pretrained weight and changes two things only: which of the top-k a token uses (the
adaptive rule, up to k_max = the model's own `num_experts_per_tok` unless `MoEConfig.top_k` says otherwise)
and how the token-expert pairs are computed (`adamoe.moe.dispatch`, no work for a skipped slot).

- The router weight `(num_experts, hidden)` becomes the `Router`'s weight: the same `Parameter`, not a copy.
- The experts' fused `gate_up_proj` `(num_experts, 2 * ffn, hidden)` (gate half first) and `down_proj`
  `(num_experts, hidden, ffn)` are moved into adamoe's input-major layout, `w_in` `(num_experts, hidden,
  2 * ffn)` (gate half first, as natively) and `w_out` `(num_experts, ffn, hidden)`. The native block is dropped
  as each layer is converted, so the weights are never held twice beyond one layer.
- Renormalisation: Mixtral always renormalises the top-k weights, Qwen-MoE and OLMoE when `norm_topk_prob`;
  that is `combine="normalized"`, else `"gate"`, unless the `MoEConfig` sets `combine` itself.
- Qwen2-MoE's shared expert and its sigmoid gate stay the model's own modules (`SharedExpert`).

With T >= 1 (or `gating="topk"`) and the model's k, the patched model computes what the model did. A new
native MoE whose router is softmax -> top-k (-> optional renormalisation) over SwiGLU-style experts is one
`NativeMoESpec` with `register_native_moe_spec`. Routers adamoe cannot reproduce (group-limited routing with a
bias, softmax over the top-k logits, biased and clamped experts) are refused by name in `UNREPRODUCIBLE_ROUTING`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class NativeMoE:
    """What one native MoE layer holds, read without changing it.

    Attributes:
        router_weight: `(num_experts, hidden)` the gate's weight.
        gate_up: `(num_experts, 2 * ffn, hidden)` fused expert input projections, the activated half first.
        down: `(num_experts, hidden, ffn)` expert output projections.
        activation: the experts' activation module.
        top_k: experts per token in the model's own routing.
        renormalize: whether the model renormalises the top-k gate probabilities to sum to 1.
        shared_expert: a module every token also goes through, or None (Qwen2-MoE).
    """

    router_weight: nn.Parameter
    gate_up: torch.Tensor
    down: torch.Tensor
    activation: nn.Module
    top_k: int
    renormalize: bool
    shared_expert: nn.Module | None = None

    @property
    def num_experts(self) -> int:
        return self.gate_up.shape[0]

    @property
    def ffn_size(self) -> int:
        return self.down.shape[-1]

    @property
    def hidden_size(self) -> int:
        return self.router_weight.shape[-1]

    def check_shapes(self) -> None:
        """Raise `AttributeError` (the spec does not fit) unless the three weights agree with each other."""
        e, h, f = self.num_experts, self.hidden_size, self.ffn_size
        shapes = (tuple(self.router_weight.shape), tuple(self.gate_up.shape), tuple(self.down.shape))
        if shapes != ((e, h), (e, 2 * f, h), (e, h, f)):
            raise AttributeError(
                f"router {shapes[0]}, gate_up_proj {shapes[1]}, down_proj {shapes[2]} are not the "
                "(E, hidden), (E, 2 * ffn, hidden), (E, hidden, ffn) layout the spec reads"
            )


class SharedExpert(nn.Module):
    """Qwen2-MoE's always-on expert: `sigmoid(gate(x)) * mlp(x)`, over the model's own two modules."""

    def __init__(self, mlp: nn.Module, gate: nn.Module) -> None:
        super().__init__()
        self.mlp = mlp
        self.gate = gate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate(hidden_states)) * self.mlp(hidden_states)


@dataclass(frozen=True)
class NativeMoESpec:
    """How one native MoE `model_type` lays out its MoE layers.

    Attributes:
        layer_pattern: regex matched (`re.search`) against module names; matches the decoder layers and
            captures the layer index as the group `index`.
        read: `(layer, hf_config) -> NativeMoE`; raises `AttributeError` when the layer is not shaped as expected.
        splice: `(layer, block) -> None`; puts the MoE block in place of the native one.
        is_moe_layer: which matched layers hold an MoE block (Qwen-MoE can keep dense MLPs in some layers).
        unsupported: `hf_config -> reason or None`, for settings of the model adamoe does not reproduce.
    """

    layer_pattern: str
    read: Callable[[nn.Module, Any], NativeMoE]
    splice: Callable[[nn.Module, nn.Module], None]
    is_moe_layer: Callable[[nn.Module], bool] | None = None
    unsupported: Callable[[Any], str | None] | None = None

    def find_layers(self, model: nn.Module) -> list[tuple[str, int, nn.Module]]:
        """`(name, layer index, layer)` for every layer with a native MoE block, in model order."""
        pattern = re.compile(self.layer_pattern)
        found = []
        for name, module in model.named_modules():
            match = pattern.search(name)
            if match and (self.is_moe_layer is None or self.is_moe_layer(module)):
                found.append((name, int(match.group("index")), module))
        return found


def _read_sparse_mlp(layer: nn.Module, *, top_k: int, renormalize: bool) -> NativeMoE:
    moe = layer.mlp  # experts(x, *top-k of softmax(gate(x))), the layout of transformers 5
    shared = None
    if hasattr(moe, "shared_expert"):
        shared = SharedExpert(moe.shared_expert, moe.shared_expert_gate)
    return NativeMoE(
        router_weight=moe.gate.weight,
        gate_up=moe.experts.gate_up_proj,
        down=moe.experts.down_proj,
        activation=moe.experts.act_fn,
        top_k=int(top_k),
        renormalize=bool(renormalize),
        shared_expert=shared,
    )


def _read_mixtral(layer: nn.Module, hf_config: Any) -> NativeMoE:
    # Mixtral renormalises the top-k weights always.
    return _read_sparse_mlp(layer, top_k=hf_config.num_experts_per_tok, renormalize=True)


def _read_norm_topk(layer: nn.Module, hf_config: Any) -> NativeMoE:
    return _read_sparse_mlp(layer, top_k=hf_config.num_experts_per_tok, renormalize=hf_config.norm_topk_prob)


def _splice_mlp(layer: nn.Module, block: nn.Module) -> None:
    layer.mlp = block


def _has_sparse_mlp(layer: nn.Module) -> bool:
    return hasattr(getattr(layer, "mlp", None), "experts")


def _mixtral_unsupported(hf_config: Any) -> str | None:
    if getattr(hf_config, "router_jitter_noise", 0) > 0:
        return (
            f"router_jitter_noise={hf_config.router_jitter_noise} multiplies the hidden states by noise in "
            "training, which adamoe's router does not reproduce; set model.config.router_jitter_noise = 0 first"
        )
    return None


_LAYERS = r"(^|\.)layers\.(?P<index>\d+)$"
_NORM_TOPK = NativeMoESpec(
    layer_pattern=_LAYERS, read=_read_norm_topk, splice=_splice_mlp, is_moe_layer=_has_sparse_mlp
)

NATIVE_MOE_SPECS: dict[str, NativeMoESpec] = {
    "mixtral": NativeMoESpec(
        layer_pattern=_LAYERS,
        read=_read_mixtral,
        splice=_splice_mlp,
        is_moe_layer=_has_sparse_mlp,
        unsupported=_mixtral_unsupported,
    ),
    "qwen2_moe": _NORM_TOPK,
    "qwen3_moe": _NORM_TOPK,
    "olmoe": _NORM_TOPK,
}

# Native MoE families whose routing is not softmax -> top-k -> optional renormalisation, and why.
UNREPRODUCIBLE_ROUTING: dict[str, str] = {
    "deepseek_v2": "group-limited top-k routing",
    "deepseek_v3": "sigmoid scores with a score-correction bias and group-limited top-k routing",
    "glm4_moe": "sigmoid scores with a score-correction bias and group-limited top-k routing",
    "gpt_oss": "softmax over the top-k router logits (with router bias), biased experts and a clamped SwiGLU",
    "switch_transformers": "top-1 routing with expert capacity and token dropping",
}


def register_native_moe_spec(model_type: str, spec: NativeMoESpec, *, overwrite: bool = False) -> None:
    """Teach `moeify` a native MoE architecture: its router must be softmax -> top-k (-> renormalise), its
    experts a gated FFN stored as `gate_up_proj` / `down_proj`, as in transformers 5's Mixtral.

    Example:
        ```python
        >>> from adamoe.patching.native import NATIVE_MOE_SPECS, register_native_moe_spec
        >>> register_native_moe_spec("my_moe", NATIVE_MOE_SPECS["qwen3_moe"])
        ```
    """
    if model_type in NATIVE_MOE_SPECS and not overwrite:
        raise ValueError(f"A native MoE spec for model_type {model_type!r} exists; pass overwrite=True to replace it.")
    NATIVE_MOE_SPECS[model_type] = spec


def looks_like_moe(hf_config: Any) -> bool:
    """Whether a transformers config describes a mixture-of-experts model (it names a count of routed experts)."""
    names = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok")
    return any(isinstance(getattr(hf_config, name, None), int) and getattr(hf_config, name) > 1 for name in names)


def moved_experts(native: NativeMoE) -> dict[str, nn.Parameter]:
    """The native expert weights in adamoe's input-major layout: `w_in` `(E, hidden, 2 * ffn)` (gate half first),
    `w_out` `(E, ffn, hidden)`. New tensors (a transpose), on the native device and dtype, as trainable as the
    native ones."""
    grad = native.gate_up.requires_grad
    with torch.no_grad():
        gate_up = native.gate_up.detach()  # (E, 2 * ffn, hidden), act(x W_gate^T) * (x W_up^T)
        return {
            "w_in": nn.Parameter(gate_up.transpose(1, 2).contiguous(), requires_grad=grad),
            "w_out": nn.Parameter(native.down.detach().transpose(1, 2).contiguous(), requires_grad=grad),
        }
