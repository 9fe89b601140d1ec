"""Export a patched model in a native MoE format, which plain transformers and serving engines (vLLM, SGLang,
llama.cpp after `convert_hf_to_gguf`) load without adamoe.

- An upcycled Llama or Mistral becomes a `MixtralForCausalLM` checkpoint, as mergekit-moe writes upcycled models:
  Mixtral's layer is exactly an upcycled gated-SiLU FFN behind a softmax router that keeps the top-k experts and
  renormalises their weights, which is adamoe's `combine="normalized"` at fixed top-k. An upcycled Qwen3 becomes
  `Qwen3MoeForCausalLM` the same way (`norm_topk_prob=True`, every layer sparse).
- A patched native MoE (Mixtral, Qwen3-MoE, OLMoE) goes back to its own format, its fine-tuned weights in place.

What a served model loses: the adaptive rule. A serving engine runs the format's fixed top-k, so the exported
model computes what adamoe computes with `gating="topk"` (`adamoe.set_routing(model, gating="topk")`); adaptive
routing at inference needs adamoe. Refused, with the reason, before anything is written: a combine the format
cannot express (gate-weighted without renormalisation), layers left dense (`every_n_layers`, `layers`), experts
with biases or another activation, attention or MLP biases Mixtral lacks, and families with no native MoE format
here (Qwen2's MoE form adds a shared expert, so an upcycled Qwen2 has no exact Qwen2-MoE equivalent).

The mapping of weights is one rule for every target: the router's `weight` `(E, H)` is the native `gate.weight`,
and the experts' input-major `w_in` `(E, H, 2F)` (gate half first) and `w_out` `(E, F, H)` are transposed into
`gate_up_proj` `(E, 2F, H)` and `down_proj` `(E, H, F)`, the inverse of `native.moved_experts`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..moe.block import moe_blocks
from .patch import CONFIG_KEY, moe_config_of


class ExportError(ValueError):
    """A model that cannot be written in a native MoE format; the message says why and what to do."""


# The decoder fields a dense Llama-family config shares with its native MoE counterpart, copied as they are.
DECODER_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "use_cache", "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings", "rope_parameters",
    "attention_dropout",
)  # fmt: skip


def _copied(config: Any, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    return {name: getattr(config, name) for name in (*DECODER_FIELDS, *extra) if hasattr(config, name)}


def _mixtral_config(config: Any, moe: Any) -> dict[str, Any]:
    """MixtralConfig fields from a Llama / Mistral config and the MoE config."""
    experts = {"num_local_experts": moe.num_experts, "num_experts_per_tok": moe.top_k, "router_jitter_noise": 0.0}
    return _copied(config, ("sliding_window",)) | experts


def _qwen3_moe_config(config: Any, moe: Any) -> dict[str, Any]:
    """Qwen3MoeConfig fields from a Qwen3 config and the MoE config: every layer sparse, the FFN as each expert."""
    return _copied(config, ("attention_bias",)) | {
        "moe_intermediate_size": config.intermediate_size,
        "num_experts": moe.num_experts,
        "num_experts_per_tok": moe.top_k,
        "norm_topk_prob": True,  # adamoe's combine="normalized"
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    }


def _qwen3_refusal(config: Any, moe: Any) -> str | None:
    if getattr(config, "use_sliding_window", False):
        return "it uses sliding-window attention, which Qwen3-MoE's config does not carry"
    return _llama_refusal(config, moe)


def _llama_refusal(config: Any, moe: Any) -> str | None:
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "its attention or MLP layers have biases, which Mixtral's do not"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"its FFN activation is {config.hidden_act}, Mixtral's experts use silu"
    return None


@dataclass(frozen=True)
class NativeTarget:
    """The native MoE format a family exports to.

    Args:
        model_type: The target's `model_type` (its config and model classes come from transformers' Auto maps).
        config: `(source config, MoE config) -> target config fields`; None keeps the source config (a native MoE).
        refusal: `(source config, MoE config) -> why it cannot be exported, or None`.
    """

    model_type: str
    config: Callable[[Any, Any], dict[str, Any]] | None = None
    refusal: Callable[[Any, Any], str | None] = lambda config, moe: None


_MIXTRAL = NativeTarget("mixtral", config=_mixtral_config, refusal=_llama_refusal)
# model_type of the patched model -> its native MoE format. Adding a family = one row.
NATIVE_TARGETS: dict[str, NativeTarget] = {
    "llama": _MIXTRAL,
    "mistral": _MIXTRAL,
    "qwen3": NativeTarget("qwen3_moe", config=_qwen3_moe_config, refusal=_qwen3_refusal),
    "mixtral": NativeTarget("mixtral"),
    "qwen3_moe": NativeTarget("qwen3_moe"),
    "olmoe": NativeTarget("olmoe"),
}
# model_type -> why it has no native MoE export here.
NO_NATIVE_FORMAT = {
    "qwen2": "Qwen2's MoE form (Qwen2-MoE) always adds a shared expert with a sigmoid gate, so an upcycled Qwen2 has "
    "no exact Qwen2-MoE equivalent",
    "qwen2_moe": "its shared expert stays a dense module in adamoe's layout, which this export does not map back yet",
}


def check_exportable(model: nn.Module) -> tuple[NativeTarget, Any]:
    """The target and the MoE config, or an `ExportError` saying why the model cannot be exported."""
    moe = moe_config_of(model)
    blocks = moe_blocks(model)
    if moe is None or not blocks:
        raise ExportError("The model has no MoE blocks: export a model patched by adamoe.moeify or a run's output.")
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type in NO_NATIVE_FORMAT:
        raise ExportError(f"A {model_type} model has no native MoE export: {NO_NATIVE_FORMAT[model_type]}.")
    target = NATIVE_TARGETS.get(model_type)
    if target is None:
        raise ExportError(
            f"A {model_type} model has no native MoE format to export to; exportable: {', '.join(NATIVE_TARGETS)}."
        )
    layers = getattr(config, "num_hidden_layers", len(blocks))
    if target.config is not None and len(blocks) != layers:
        raise ExportError(
            f"{len(blocks)} of {layers} FFNs are MoE blocks ({moe.every_n_layers=}, {moe.layers=}); "
            f"{target.model_type} has experts in every layer. Convert every FFN to export."
        )
    if moe.num_null_experts:
        raise ExportError(
            f"The routers score {moe.num_null_experts} null experts; {target.model_type} has no expert that computes "
            "nothing, so a served model would route their tokens to real experts instead."
        )
    if moe.combine != "normalized":
        raise ExportError(
            f"combine={moe.combine!r} weights the experts by their raw gate probabilities; {target.model_type} "
            "renormalises the top-k weights (combine='normalized'), so the exported model would compute otherwise."
        )
    for name, block in blocks:
        experts = block.experts
        activation = type(experts.activation).__name__.lower()
        if experts.b_in is not None or experts.b_out is not None or not experts.gated or "silu" not in activation:
            raise ExportError(
                f"{name}: its experts have biases, no gate or another activation than SiLU; {target.model_type}'s "
                "experts are gated SiLU FFNs without biases."
            )
    reason = target.refusal(config, moe)
    if reason is not None:
        raise ExportError(f"This {model_type} model cannot become {target.model_type}: {reason}.")
    return target, moe


def native_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under the native MoE names and layouts (see the module docstring)."""
    state = {}
    blocks = dict(moe_blocks(model))
    for key, tensor in model.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        owner, _, kind = prefix.rpartition(".")
        if prefix.endswith(".router") and prefix.removesuffix(".router") in blocks:
            # The routing rule's state (a steered threshold, moving averages) means nothing to fixed top-k serving.
            if leaf == "weight":
                state[f"{prefix.removesuffix('.router')}.gate.weight"] = tensor
        elif kind == "experts" and owner in blocks and leaf in ("w_in", "w_out"):
            name = "gate_up_proj" if leaf == "w_in" else "down_proj"
            # (E, H, 2F) -> (E, 2F, H) and (E, F, H) -> (E, H, F)
            state[f"{prefix}.{name}"] = tensor.transpose(1, 2).contiguous()
        else:
            state[key] = tensor
    return state


def export_native(model: nn.Module, output_dir: str | os.PathLike) -> nn.Module:
    """Write `model` in its family's native MoE format (see the module docstring) and return the native model.

    Raises:
        ExportError: the model cannot be exported; nothing is written.

    Example:
        ```python
        >>> model = adamoe.from_pretrained("runs/wikitext-smollm2")      # an upcycled Llama
        >>> adamoe.export_native(model, "smollm2-moe-mixtral")
        >>> transformers.AutoModelForCausalLM.from_pretrained("smollm2-moe-mixtral")   # a MixtralForCausalLM
        ```
    """
    import transformers

    target, moe = check_exportable(model)
    source = model.config.to_dict()
    source.pop(CONFIG_KEY, None)
    if target.config is None:
        native_config = transformers.AutoConfig.for_model(target.model_type, **{
            k: v for k, v in source.items() if k not in ("model_type", "transformers_version", "architectures")
        })  # fmt: skip
        native_config.num_experts_per_tok = moe.top_k
    else:
        native_config = transformers.AutoConfig.for_model(target.model_type, **target.config(model.config, moe))
    native_config.output_router_logits = False
    native = transformers.AutoModelForCausalLM.from_config(native_config)  # every weight is overwritten below
    missing, unexpected = native.load_state_dict(native_state_dict(model), strict=False)
    tied = {"lm_head.weight"} if getattr(native_config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ExportError(
            f"The weights do not map onto {type(native).__name__}: missing {missing}, unexpected {unexpected}."
        )
    if tied:
        native.tie_weights()
    native.to(next(model.parameters()).dtype).eval()
    native.save_pretrained(Path(output_dir))
    return native
