"""`moeify`: turn the FFNs of a Hugging Face model into MoE blocks, in place.

Everything is checked and every block is built before the first module is replaced, so a failure leaves
the model exactly as it was (never half patched). The MoE config is written into `model.config` under
`adamoe`, which is how `save_pretrained`, Trainer checkpoints and `push_to_hub` carry it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .architectures import FFN_SPECS, DenseFFN, FFNSpec, stack_of
from .config import MoEConfig
from .experts import Experts
from .layer import MoEBlock
from .router import Router

CONFIG_KEY = "adamoe"


class UnsupportedArchitectureError(ValueError):
    """`moeify` has no FFN spec for the model's `model_type`."""


def moe_blocks(model: nn.Module) -> list[tuple[str, MoEBlock]]:
    """`(module name, block)` for every MoE block of `model`, in model order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, MoEBlock)]


def is_moe_model(model: nn.Module) -> bool:
    """Whether `model` holds at least one MoE block."""
    return any(isinstance(module, MoEBlock) for module in model.modules())


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
    """Every expert starts as the pretrained FFN (Linear `(out, in)` -> stacked `(in, out)`)."""
    pairs = [(experts.w_in, ffn.w_in.t()), (experts.w_out, ffn.w_out.t())]
    if ffn.w_gate is not None:
        pairs.append((experts.w_gate, ffn.w_gate.t()))
    for target, source in pairs:
        target.copy_(source.unsqueeze(0).expand_as(target))
        if noise > 0:
            # Relative to the weight's own scale, so one value suits every layer and model size.
            target.add_(torch.randn_like(target) * noise * source.float().std().to(target.dtype))
    for target, source in ((experts.b_in, ffn.b_in), (experts.b_gate, ffn.b_gate), (experts.b_out, ffn.b_out)):
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


def _read_ffns(model: nn.Module, config: MoEConfig) -> tuple[FFNSpec, list[tuple[nn.Module, str, DenseFFN]]]:
    """Check that `model` can be patched as `config` says and read the FFNs to replace; changes nothing.

    Returns the model's spec and `(layer, layer name, dense FFN)` for every layer to convert, in model order.
    """
    hf_config = getattr(model, "config", None)
    model_type = getattr(hf_config, "model_type", None)
    spec = FFN_SPECS.get(model_type)
    if spec is None:
        raise UnsupportedArchitectureError(
            f"adamoe cannot convert model_type {model_type!r} ({type(model).__name__}): supported are "
            f"{', '.join(sorted(FFN_SPECS))}. To add an architecture, describe its FFN with "
            "`adamoe.FFNSpec` and call `adamoe.register_ffn_spec(model_type, spec)`."
        )
    if is_moe_model(model):
        raise ValueError(f"{type(model).__name__} already has MoE blocks; moeify it only once.")

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
        model: a Hugging Face model of a supported `model_type` (see `adamoe.architectures.FFN_SPECS`).
        config: how to build the blocks; `MoEConfig()` when None.
        initialize: initialise the experts as `config.expert_init` says; False leaves them at their
            default init, for when a checkpoint's weights are loaded next.

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
    spec, dense = _read_ffns(model, config)
    init_std = _init_std(model)
    blocks = [
        (layer, _build_block(name, ffn, config, **_block_kwargs(spec, name), init_std=init_std, initialize=initialize))
        for layer, name, ffn in dense
    ]

    for layer, block in blocks:
        block.train(layer.training)  # new modules start in training mode; follow the model's
        spec.splice(layer, block)
    setattr(model.config, CONFIG_KEY, config.to_dict())
    model.register_forward_pre_hook(_hand_token_masks, with_kwargs=True)
    return model
