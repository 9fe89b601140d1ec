"""LoRA on a patched model through PEFT: on attention, on the experts, or both, with the routers trainable.

PEFT (>= 0.17) puts a per-expert low-rank update on a 3-D expert weight through `target_parameters`: its
`ParamWrapper` wraps the module that owns the weight and adds the update while that module's `forward` runs, so
`MoEBlock` calls its experts through `forward` (never a method around it) and the update reaches the grouped
dispatch as a weight. `lora_config` builds the `LoraConfig` for a patched model:

- targets by name: "attention" (the family's attention projections, `ATTENTION_TARGETS`), "experts" (`w_in` and
  `w_out` of every MoE block: a rank-r update per expert), or module names; the names of transformers' native MoE
  layout that recipes for Mixtral or Qwen-MoE use (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`,
  `mlp.gate`) resolve to adamoe's (`NATIVE_NAMES`);
- the routers are trained too (`modules_to_save=["router"]`, saved with the adapter) when the gating is adaptive,
  since LoRA alone would freeze them and adaptive gating could not learn whom to send where; `train_routers`
  says otherwise;
- a target list that matches nothing, or a rank below 1, is a `LoraError` before PEFT touches the model.

`adamoe.balance_loss`, `routing_stats`, `set_routing` and the trainer work through the resulting `PeftModel`;
its adapter saves with `save_pretrained`, loads back onto the same patched base (`load_lora`), and merges
(`merge_and_unload`). PEFT is an optional dependency: `pip install 'adamoe[lora]'`.

```python
model = adamoe.from_pretrained("runs/wikitext-smollm2")
peft_model = peft.get_peft_model(model, adamoe.lora_config(model, r=8, alpha=16))
```
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..moe.block import moe_blocks
from .patch import moe_config_of

LORA_EXTRA = "pip install 'adamoe[lora]'  (or: pip install 'peft>=0.17')"
EXPERT_PARAMETERS = ("experts.w_in", "experts.w_out")
# model_type -> the attention projections LoRA targets by default (PEFT's own table, for the families adamoe patches).
ATTENTION_TARGETS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "olmoe", "gemma", "gemma2"),
        ("q_proj", "k_proj", "v_proj", "o_proj"),
    ),
    "phi3": ("qkv_proj", "o_proj"),
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "electra"), ("query", "key", "value")),
    "deberta-v2": ("query_proj", "key_proj", "value_proj"),
    "distilbert": ("q_lin", "k_lin", "v_lin"),
    "modernbert": ("Wqkv",),
    "gpt2": ("c_attn",),
    **dict.fromkeys(("t5", "mt5", "umt5"), ("q", "k", "v", "o")),
    **dict.fromkeys(
        ("bart", "mbart", "marian", "pegasus", "m2m_100", "fsmt"), ("q_proj", "k_proj", "v_proj", "out_proj")
    ),
}
# A native MoE layout's names (what PEFT recipes for Mixtral, Qwen-MoE, OLMoE target) -> adamoe's.
NATIVE_NAMES = {
    "gate_up_proj": "experts.w_in",
    "experts.gate_up_proj": "experts.w_in",
    "mlp.experts.gate_up_proj": "experts.w_in",
    "down_proj": "experts.w_out",
    "experts.down_proj": "experts.w_out",
    "mlp.experts.down_proj": "experts.w_out",
    "gate": "router",
    "mlp.gate": "router",
}


class LoraError(ValueError):
    """A LoRA setting that cannot apply to this model; the message says what to target instead."""


def _require_peft() -> None:
    if importlib.util.find_spec("peft") is None:
        raise LoraError(f"LoRA needs the peft package: {LORA_EXTRA}.")


def resolve_targets(model: nn.Module, targets: Sequence[str]) -> tuple[list[str], list[str], bool]:
    """`(target_modules, target_parameters, routers)` for PEFT from adamoe's target names (see the module
    docstring); raises `LoraError` for a name that matches nothing in `model`."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    module_names = [name for name, _ in model.named_modules()]
    modules, parameters, routers = [], [], False
    for target in targets:
        target = NATIVE_NAMES.get(target, target)
        if target == "attention":
            if model_type not in ATTENTION_TARGETS:
                raise LoraError(
                    f"No default attention targets for model_type {model_type!r}; name its projections "
                    f"(e.g. q_proj, v_proj). Known families: {', '.join(sorted(ATTENTION_TARGETS))}."
                )
            modules += ATTENTION_TARGETS[model_type]
        elif target in ("experts", *EXPERT_PARAMETERS):
            if not moe_blocks(model):
                raise LoraError("'experts' targets the MoE blocks' expert weights, but the model has no MoE blocks.")
            parameters += list(EXPERT_PARAMETERS) if target == "experts" else [target]
        elif target == "router":
            routers = True
        elif any(name == target or name.endswith("." + target) for name in module_names):
            modules.append(target)
        else:
            raise LoraError(
                f"LoRA target {target!r} matches no module of this {type(model).__name__}. Use 'attention', "
                "'experts', 'router', a module name (q_proj, ...), or a native MoE name "
                f"({', '.join(sorted(NATIVE_NAMES))})."
            )
    return list(dict.fromkeys(modules)), list(dict.fromkeys(parameters)), routers


def lora_config(
    model: nn.Module,
    *,
    r: int = 8,
    alpha: int | None = None,
    targets: Sequence[str] = ("attention", "experts"),
    train_routers: bool | None = None,
    **peft_kwargs: Any,
) -> Any:
    """The `peft.LoraConfig` for a patched model (see the module docstring).

    Args:
        model: a model patched by `adamoe.moeify` / `adamoe.from_pretrained` (or a dense one, attention only).
        r: the rank, >= 1.
        alpha: LoRA's alpha; None: 2 * r.
        targets: "attention", "experts", "router", module names, or native MoE names.
        train_routers: train the routers (saved with the adapter); None: when the gating is adaptive.
        **peft_kwargs: other `LoraConfig` fields (`task_type`, `init_lora_weights`, ...); `lora_dropout` must be 0
            where the experts are targeted (PEFT cannot factor dropout out of a weight update).

    Raises:
        LoraError: peft is missing, `r` < 1, or a target matches nothing.
    """
    _require_peft()
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise LoraError(f"The LoRA rank r must be an integer >= 1, got {r!r}.")
    modules, parameters, routers = resolve_targets(model, targets)
    stored = moe_config_of(model)
    if train_routers is None:
        train_routers = routers or (stored is not None and stored.gating == "adaptive")
    if not modules and not parameters and not train_routers:
        raise LoraError(f"The targets {list(targets)} leave nothing to train.")
    from peft import LoraConfig

    save = sorted(set(peft_kwargs.pop("modules_to_save", None) or []) | ({"router"} if train_routers else set()))
    return LoraConfig(
        r=r,
        lora_alpha=alpha if alpha is not None else 2 * r,
        target_modules=modules or None,
        target_parameters=parameters or None,
        modules_to_save=save or None,
        **peft_kwargs,
    )


def load_lora(model: nn.Module, adapter: str, **kwargs: Any) -> Any:
    """`peft.PeftModel.from_pretrained(model, adapter)` with the mismatch of a different MoE structure explained.

    Raises:
        LoraError: the adapter was trained on a base with another expert count or layer set.
    """
    _require_peft()
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter, **kwargs)
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        stored = moe_config_of(model)
        experts = f"{stored.num_experts} experts" if stored is not None else "no MoE blocks"
        raise LoraError(
            f"The adapter in {adapter} was trained on a base with another MoE structure than this model's ({experts}"
            "): its weights do not fit. Load it onto the patched model it was trained on (the same num_experts, "
            f"layers and every_n_layers). ({str(err).splitlines()[0]})"
        ) from err
