"""`moeify`: turn the FFNs of a Hugging Face model into MoE blocks, in place.

Everything is checked and every block is built before the first module is replaced, so a failure leaves
the model exactly as it was (never half patched). The MoE config is written into `model.config` under
`adamoe`, which is how `save_pretrained`, Trainer checkpoints and `push_to_hub` carry it, with its "from the
model" fields filled in.

A dense model's FFNs are upcycled (`adamoe.patching.dense`); a native MoE model keeps its own router and
experts, and only its routing rule and dispatch are replaced (`adamoe.patching.native`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from ..moe.block import MoEBlock, is_moe_model, moe_blocks
from ..moe.config import STRUCTURAL_FIELDS, VERSION_KEY, MoEConfig, MoEConfigError
from ..moe.experts import Experts
from ..moe.router import Router
from .dense import FFN_SPECS, DenseFFN, FFNSpec, stack_of
from .native import NATIVE_MOE_SPECS, UNREPRODUCIBLE_ROUTING, NativeMoE, NativeMoESpec, looks_like_moe, moved_experts

logger = logging.getLogger(__name__)

CONFIG_KEY = "adamoe"


class UnsupportedArchitectureError(ValueError):
    """`moeify` has no FFN spec for the model's `model_type`."""


def stored_config(config: MoEConfig) -> dict[str, Any]:
    """What `config.json` holds under `adamoe`: the config, and the adamoe version that wrote it."""
    from .. import __version__

    return {**config.to_dict(), VERSION_KEY: __version__}


def moe_config_of(model_or_config: Any) -> MoEConfig | None:
    """The `MoEConfig` stored in a model's (or a transformers config's) `adamoe` entry, if any."""
    config = getattr(model_or_config, "config", model_or_config)
    stored = getattr(config, CONFIG_KEY, None)
    return None if stored is None else MoEConfig.from_dict(dict(stored))


def set_routing(model: nn.Module, **changes: Any) -> MoEConfig:
    """Change how a patched model routes (`gating`, `threshold`, `threshold_on`, `top_k`, `combine`, ...) in every
    MoE block and in `model.config` together, validated first; returns the new config.

    `MoEConfig` is frozen, so this is the one way to change routing after `moeify`: the blocks and the config
    saved with the model never disagree. Fields that decide which parameters exist (`num_experts`, `layers`,
    `every_n_layers`) cannot change on a patched model; `top_k` may not exceed the experts there are.

    Example:
        ```python
        >>> adamoe.set_routing(model, gating="top2")          # evaluate the same weights as fixed top-2
        >>> adamoe.set_routing(model, gating="adaptive", threshold=0.2)
        ```
    """
    blocks = moe_blocks(model)
    stored = moe_config_of(model)
    if not blocks or stored is None:
        raise ValueError(f"{type(model).__name__} has no MoE blocks: call adamoe.moeify or adamoe.from_pretrained.")
    known = {f.name for f in dataclasses.fields(MoEConfig)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise MoEConfigError(f"Unknown MoEConfig field(s) {unknown}; known fields are {sorted(known)}.")
    structural = sorted(set(changes) & set(STRUCTURAL_FIELDS))
    if structural:
        raise MoEConfigError(
            f"{structural} decide which parameters exist and cannot change on a patched model; convert the dense "
            "model again (adamoe.moeify) with the structure you want."
        )
    new = dataclasses.replace(stored, **changes)  # validated by MoEConfig.__post_init__
    for _, block in blocks:
        block.config = dataclasses.replace(block.config, **changes)
        # Every router inside the block: a PEFT wrapper (modules_to_save) holds the original and its trained copies.
        for router in (module for module in block.modules() if isinstance(module, Router)):
            router.config = dataclasses.replace(router.config, **changes)
    setattr(model.config, CONFIG_KEY, stored_config(new))
    return new


def _build_block(
    name: str,
    ffn: DenseFFN,
    config: MoEConfig,
    *,
    seq_first: bool,
    stack: str,
    init_std: float,
    initialize: bool,
    device: torch.device | str | None = None,
) -> MoEBlock:
    """The MoE block for one dense FFN, on `device` (default: the FFN's; "meta" builds it without memory)."""
    ffn_size, hidden_size = ffn.w_in.shape
    experts = Experts(
        num_experts=config.num_experts,
        hidden_size=hidden_size,
        ffn_size=ffn_size,
        activation=ffn.activation,
        gated=ffn.w_gate is not None,
        bias=ffn.b_in is not None,
        dropout=ffn.dropout,
        dispatch=config.dispatch,
    )
    router = Router(hidden_size, config)
    block = MoEBlock(
        router=router,
        experts=experts,
        config=config,
        layer_name=name,
        stack=stack,
        seq_first=seq_first,
        output_dropout=ffn.output_dropout,
    )
    block.to(device=ffn.w_in.device if device is None else device, dtype=ffn.w_in.dtype)
    if not initialize:
        return block
    with torch.no_grad():
        if config.expert_init == "upcycle":
            _upcycle(experts, ffn, config.upcycle_noise)
        else:
            experts.reset_parameters(std=init_std)
    return block


def _upcycle(experts: Experts, ffn: DenseFFN, noise: float) -> None:
    """Every expert starts as the pretrained FFN (Linear `(out, in)` -> stacked `(in, out)`; a gated FFN's halves
    side by side in `w_in`, gate first)."""
    w_in = ffn.w_in if ffn.w_gate is None else torch.cat([ffn.w_gate, ffn.w_in], dim=0)  # (ffn or 2 * ffn, hidden)
    b_in = ffn.b_in if ffn.b_gate is None else torch.cat([ffn.b_gate, ffn.b_in], dim=0)
    for target, source in ((experts.w_in, w_in.t()), (experts.w_out, ffn.w_out.t())):
        target.copy_(source.unsqueeze(0).expand_as(target))
        if noise > 0:
            # Relative to the weight's own scale, so one value suits every layer and model size.
            target.add_(torch.randn_like(target) * noise * source.float().std().to(target.dtype))
    for target, source in ((experts.b_in, b_in), (experts.b_out, ffn.b_out)):
        if target is not None:
            target.copy_(source.unsqueeze(0).expand_as(target))


def _hand_token_masks(model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    """Forward pre-hook: give every block the padding mask of its stack for this forward.

    The blocks are found by walking the modules on each call rather than captured once, so a deep copy
    of the model keeps working.
    """
    encoder_mask = kwargs.get("attention_mask")
    decoder_mask = encoder_mask
    if getattr(model.config, "is_encoder_decoder", False):
        decoder_mask = kwargs.get("decoder_attention_mask")
        labels = kwargs.get("labels")
        if decoder_mask is None and labels is not None:
            # Decoder inputs are the labels shifted right (by the model, or by the collator), so position t
            # predicts label t and -100 marks padding. Blocks ignore a mask whose shape differs from their input.
            decoder_mask = labels != -100
    for module in model.modules():
        if isinstance(module, MoEBlock):
            module.token_mask = decoder_mask if module.stack == "decoder" else encoder_mask


def _refuse_router_logits(model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    """Forward pre-hook of a patched native MoE: its own routers, router logits and aux loss are gone."""
    if kwargs.get("output_router_logits") or getattr(model.config, "output_router_logits", False):
        raise ValueError(
            f"This {type(model).__name__} was patched by adamoe: its own routers and their aux loss "
            "(router_aux_loss_coef) are replaced, so output_router_logits=True has nothing to return. adamoe's "
            "balance loss is `adamoe.balance_loss(model)` (AdaMoETrainer adds it in training), and each block's "
            "gate probabilities are `block.last_routing.probs` for `_, block in adamoe.moe_blocks(model)`. Call "
            "the model without output_router_logits (and keep model.config.output_router_logits False)."
        )


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def _check_patchable(model: nn.Module) -> None:
    """Refuse a model that is already patched, or whose architecture no spec describes."""
    if is_moe_model(model):
        raise ValueError(
            f"{type(model).__name__} already has MoE blocks (it was patched by adamoe.moeify or loaded with "
            "adamoe.from_pretrained); moeify it only once. To route it differently, load its checkpoint with "
            "adamoe.from_pretrained(path, moe=adamoe.MoEConfig(...)) or set the routing fields on the blocks' config."
        )
    model_type = _model_type(model)
    if model_type in FFN_SPECS or model_type in NATIVE_MOE_SPECS:
        return
    native = ", ".join(sorted(NATIVE_MOE_SPECS))
    hf_config = getattr(model, "config", None)
    if model_type in UNREPRODUCIBLE_ROUTING or looks_like_moe(hf_config):
        reason = UNREPRODUCIBLE_ROUTING.get(model_type, "a router adamoe has no spec for")
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} (model_type {model_type!r}) is a native mixture-of-experts model with {reason}; "
            "adamoe cannot reproduce its routing, so patching it would silently compute a different model. "
            f"Native MoE models adamoe supports: {native}. One whose router is softmax -> top-k (-> renormalise) "
            "over gated experts can be added with "
            "`adamoe.register_native_moe_spec(model_type, adamoe.NativeMoESpec(...))`. "
            "Nothing was changed."
        )
    raise UnsupportedArchitectureError(
        f"adamoe cannot convert model_type {model_type!r} ({type(model).__name__}): supported are "
        f"{', '.join(sorted(FFN_SPECS))} (dense, upcycled) and {native} (native MoE). To add an architecture, "
        "describe its FFN with `adamoe.FFNSpec` and call `adamoe.register_ffn_spec(model_type, spec)`."
    )


def _read_native(
    model: nn.Module, config: MoEConfig, spec: NativeMoESpec
) -> tuple[MoEConfig, list[tuple[nn.Module, str, NativeMoE]]]:
    """Check that a native MoE model can be patched as `config` says and read its MoE layers; changes nothing.

    Returns `config` resolved from the model (its expert count, top-k and renormalisation where `config` leaves
    them None) and `(layer, layer name, native MoE)` for every MoE layer, in model order.
    """
    hf_config, model_type, name = model.config, _model_type(model), type(model).__name__
    reason = spec.unsupported(hf_config) if spec.unsupported is not None else None
    if reason:
        raise UnsupportedArchitectureError(f"adamoe cannot reproduce the routing of this {name}: {reason}.")
    if config.layers != "all" or config.every_n_layers != 1:
        raise MoEConfigError(
            f"{name} is a native MoE model: adamoe replaces the routing of every one of its MoE layers, so "
            "layers / every_n_layers (which choose the dense FFNs to upcycle) do not apply. Leave them at their "
            "defaults."
        )
    if config.num_null_experts:
        raise MoEConfigError(
            f"{name} is a native MoE model whose router adamoe keeps as it is; null experts would add rows to it "
            "that its pretraining never saw. Use num_null_experts=0 here (upcycled dense models take them)."
        )
    if config.expert_init != "upcycle" or config.upcycle_noise > 0:
        raise MoEConfigError(
            f"{name} is a native MoE model whose pretrained experts adamoe keeps; expert_init="
            f"{config.expert_init!r} / upcycle_noise={config.upcycle_noise} would overwrite them. Leave both at "
            "their defaults."
        )
    layers = spec.find_layers(model)
    if not layers:
        raise UnsupportedArchitectureError(
            f"Found no MoE layers in {name} matching the {model_type!r} native spec (pattern "
            f"{spec.layer_pattern!r}); its module layout differs from what the spec describes. Nothing was changed."
        )
    try:
        natives = [(layer, layer_name, spec.read(layer, hf_config)) for layer_name, _, layer in layers]
        for _, _, native in natives:
            native.check_shapes()
    except AttributeError as err:
        raise UnsupportedArchitectureError(
            f"The {model_type!r} native MoE spec does not fit {name}: {err}. Nothing was changed."
        ) from err
    first = natives[0][2]
    experts, top_k = first.num_experts, first.top_k
    if config.num_experts is not None and config.num_experts != experts:
        raise MoEConfigError(
            f"MoEConfig(num_experts={config.num_experts}) contradicts {name}, which has {experts} pretrained "
            "experts per MoE layer; adamoe keeps them. Leave num_experts unset (None) to use the model's own."
        )
    if config.top_k is not None and config.top_k > experts:
        raise MoEConfigError(
            f"top_k={config.top_k} exceeds the {experts} experts per layer of {name}: a token cannot use more "
            f"experts than the layer has. Use top_k <= {experts}, or leave it unset for the model's own "
            f"{top_k}."
        )
    resolved = config.resolve(num_experts=experts, top_k=top_k, combine="normalized" if first.renormalize else "gate")
    return resolved, natives


def _native_block(name: str, native: NativeMoE, config: MoEConfig) -> MoEBlock:
    """The MoE block over one native layer's own router and experts (moved, not initialised)."""
    with torch.device("meta"):  # placeholders only: every tensor is replaced below
        experts = Experts(
            num_experts=native.num_experts,
            hidden_size=native.hidden_size,
            ffn_size=native.ffn_size,
            activation=native.activation,
            gated=True,
            bias=False,
            dispatch=config.dispatch,
        )
        router = Router(native.hidden_size, config)
    for attr, param in moved_experts(native).items():
        setattr(experts, attr, param)
    router.weight = native.router_weight  # the same Parameter: the router is the model's own
    return MoEBlock(
        router=router,
        experts=experts,
        config=config,
        layer_name=name,
        stack="decoder",
        shared_expert=native.shared_expert,
    )


def _moeify_native(model: nn.Module, config: MoEConfig, spec: NativeMoESpec) -> nn.Module:
    config, natives = _read_native(model, config, spec)
    # One layer at a time, so the expert weights exist twice for at most one layer: each native block (and with
    # it its fused tensors) is dropped as soon as its adamoe block stands in its place.
    while natives:
        layer, name, native = natives.pop(0)
        block = _native_block(name, native, config)
        block.train(layer.training)
        spec.splice(layer, block)
        del native
    if getattr(model.config, "output_router_logits", False):
        logger.warning(
            "%s had output_router_logits=True: its router aux loss is replaced by adamoe.balance_loss(model), "
            "so it is switched off.",
            type(model).__name__,
        )
    if hasattr(model.config, "output_router_logits"):
        model.config.output_router_logits = False
    # transformers' save_pretrained writes a model "in its original format", undoing the renames it applies to
    # the model's Hub checkpoints (Mixtral's `.mlp.` -> `.block_sparse_moe.`). A patched model's weights are
    # adamoe's layout, never that format, so it is saved under the names it has; an empty list of conversions
    # is what transformers keeps for a model it loaded without any.
    model._weight_conversions = []
    setattr(model.config, CONFIG_KEY, stored_config(config))
    model.register_forward_pre_hook(_hand_token_masks, with_kwargs=True)
    model.register_forward_pre_hook(_refuse_router_logits, with_kwargs=True)
    return model


def _read_ffns(model: nn.Module, config: MoEConfig) -> tuple[FFNSpec, list[tuple[nn.Module, str, DenseFFN]]]:
    """Check that `model` can be patched as `config` says and read the FFNs to replace; changes nothing.

    Returns the model's spec and `(layer, layer name, dense FFN)` for every layer to convert, in model order.
    """
    _check_patchable(model)
    model_type = _model_type(model)
    spec = FFN_SPECS[model_type]

    layers = spec.find_layers(model)
    if not layers:
        raise UnsupportedArchitectureError(
            f"Found no FFN layers in {type(model).__name__} matching the {model_type!r} spec "
            f"(pattern {spec.layer_pattern!r}); its module layout differs from what the spec describes."
        )
    if config.layers != "all":
        present = {index for _, index, _ in layers}
        absent = sorted(set(config.layers) - present)
        if absent:
            raise ValueError(f"layers={config.layers}: no layer {absent} in this model (it has {sorted(present)}).")
    chosen = [(name, layer) for name, index, layer in layers if config.converts_layer(index)]
    if not chosen:
        raise ValueError(f"every_n_layers={config.every_n_layers} selects none of the {len(layers)} FFN layers.")

    try:
        dense = [(layer, name, spec.read(layer)) for name, layer in chosen]
    except AttributeError as err:
        raise UnsupportedArchitectureError(
            f"The {model_type!r} FFN spec does not fit {type(model).__name__}: {err}. Nothing was changed."
        ) from err
    return spec, dense


def _init_std(model: nn.Module) -> float:
    hf_config = getattr(model, "config", None)
    return float(getattr(hf_config, "initializer_range", getattr(hf_config, "init_std", 0.02)) or 0.02)


def _block_kwargs(spec: FFNSpec, name: str) -> dict[str, Any]:
    return {"seq_first": spec.seq_first, "stack": spec.stack or stack_of(name)}


def upcycled_parameter_count(model: nn.Module, config: MoEConfig | None = None) -> int:
    """How many parameters `model` would have after `moeify(model, config)`, without changing or copying it.

    Each converted FFN is counted as `num_experts` expert FFNs plus a router in its place; the blocks are
    built on the meta device, so even a large model costs no memory. The same checks as `moeify` run first.
    Multiply by 2 for the size of the weights in bf16 bytes.

    Example:
        ```python
        >>> from transformers import BertConfig, BertModel
        >>> model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                              intermediate_size=64, vocab_size=100))
        >>> adamoe.upcycled_parameter_count(model, adamoe.MoEConfig(num_experts=4)) > model.num_parameters()
        True
        ```
    """
    config = config if config is not None else MoEConfig()
    _check_patchable(model)
    native = NATIVE_MOE_SPECS.get(_model_type(model))
    if native is not None:
        _read_native(model, config, native)
        return sum(p.numel() for p in model.parameters())  # a native MoE keeps its experts: same count
    config = config.resolve()
    spec, dense = _read_ffns(model, config)
    total = sum(p.numel() for p in model.parameters())
    for _, name, ffn in dense:
        replaced = (ffn.w_in, ffn.b_in, ffn.w_gate, ffn.b_gate, ffn.w_out, ffn.b_out)
        total -= sum(t.numel() for t in replaced if t is not None)
        with torch.device("meta"):
            block = _build_block(
                name, ffn, config, **_block_kwargs(spec, name), init_std=0.02, initialize=False, device="meta"
            )
        total += sum(p.numel() for p in block.parameters())
    return total


def moeify(model: nn.Module, config: MoEConfig | None = None, *, initialize: bool = True) -> nn.Module:
    """Replace the FFNs of `model` with adaptive-gated MoE blocks, in place, and return it.

    Args:
        model: a Hugging Face model of a supported `model_type`: a dense one (`adamoe.patching.dense.FFN_SPECS`),
            whose FFNs are upcycled into experts, or a native MoE (`adamoe.patching.native.NATIVE_MOE_SPECS`: Mixtral,
            Qwen2-MoE, Qwen3-MoE, OLMoE), whose router and experts are kept and whose routing becomes adaptive.
        config: how to build the blocks; `MoEConfig()` when None. Its None fields come from the model (a native
            MoE's expert count, top-k and renormalisation; else 16 experts, k_max 2, renormalised).
        initialize: initialise the experts as `config.expert_init` says; False leaves them at their
            default init, for when a checkpoint's weights are loaded next. A native MoE's weights are always
            moved, never initialised.

    Returns:
        The same model object, patched; `model.config.adamoe` holds the MoE config.

    Example:
        ```python
        >>> from transformers import BertConfig, BertModel
        >>> model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                              intermediate_size=64, vocab_size=100))
        >>> model = adamoe.moeify(model, adamoe.MoEConfig(num_experts=4))
        >>> len(adamoe.moe_blocks(model))
        2
        ```
    """
    config = config if config is not None else MoEConfig()
    _check_patchable(model)
    native = NATIVE_MOE_SPECS.get(_model_type(model))
    if native is not None:
        return _moeify_native(model, config, native)
    config = config.resolve()
    spec, dense = _read_ffns(model, config)
    init_std = _init_std(model)
    blocks = [
        (layer, _build_block(name, ffn, config, **_block_kwargs(spec, name), init_std=init_std, initialize=initialize))
        for layer, name, ffn in dense
    ]

    for layer, block in blocks:
        block.train(layer.training)  # new modules start in training mode; follow the model's
        spec.splice(layer, block)
    setattr(model.config, CONFIG_KEY, stored_config(config))
    model.register_forward_pre_hook(_hand_token_masks, with_kwargs=True)
    return model
