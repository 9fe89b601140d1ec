"""Per-architecture knowledge: where each model family keeps its FFN and how to splice an MoE block in.

Every family shapes its FFN differently:
- BERT/RoBERTa split it across `intermediate` (dense + activation) and `output` (dense + dropout + residual
  LayerNorm). The block replaces `intermediate` and `output.dense` becomes the identity, so the
  dropout, residual and LayerNorm of `output` still apply. (The suffix `output.dense` also matches
  `attention.output.dense`: the specs match whole layers, never name suffixes.)
- GPT-2 has one `mlp` with Conv1D weights stored input-major `(in, out)`, dropout inside it.
- T5 has `DenseReluDense` (v1.0: `wi`, ReLU; v1.1/Flan: gated `wi_0`/`wi_1`, GELU), no biases.
- BART and FSMT apply `fc1`, activation, activation dropout and `fc2` inline in the layer's forward. The
  block takes `fc1`'s place and computes the whole FFN; the activation and `fc2` become identities and
  the layer's activation dropout moves inside the experts. FSMT passes `(seq_len, batch, hidden)`. mBART,
  Marian, Pegasus and M2M100 are laid out like BART; XLM-RoBERTa, ELECTRA and DeBERTa-v2 like BERT; mT5
  and UMT5 like T5.
- Llama-family decoders (Llama, Mistral, Qwen2/3, Gemma/Gemma2) have a gated `mlp`:
  `down_proj(act(gate_proj(x)) * up_proj(x))`. Phi-3 fuses the two input projections into one
  `gate_up_proj` whose first half is activated, ModernBERT into one `Wi` whose first half is activated too;
  the spec splits the fused weight, so the experts hold the two halves as separate matrices.
- DistilBERT has one `ffn` module (`lin1`, activation, `lin2`, dropout) that the block replaces whole.

Adding an architecture is adding one `FFNSpec` with `register_ffn_spec` (and a row in the test table).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DenseFFN:
    """The weights and hyper-parameters of one pretrained FFN, in `nn.Linear` layout `(out, in)`.

    Attributes:
        w_in: `(ffn, hidden)` input projection (the linear half of a gated FFN).
        b_in: `(ffn,)` or None.
        w_gate: `(ffn, hidden)` the activated half of a gated FFN, or None.
        b_gate: `(ffn,)` bias of the activated half, or None (a gated FFN has biases on both halves or none).
        w_out: `(hidden, ffn)` output projection.
        b_out: `(hidden,)` or None.
        activation: the activation module.
        dropout: dropout probability between activation and output projection.
        output_dropout: dropout after the output projection that the replaced module applied itself.
    """

    w_in: torch.Tensor
    b_in: torch.Tensor | None
    w_gate: torch.Tensor | None
    w_out: torch.Tensor
    b_out: torch.Tensor | None
    activation: nn.Module
    dropout: float = 0.0
    output_dropout: float = 0.0
    b_gate: torch.Tensor | None = None


@dataclass(frozen=True)
class FFNSpec:
    """How one `model_type` lays out its FFN.

    Attributes:
        layer_pattern: regex matched (`re.search`) against module names; it matches the layers that own an
            FFN and captures the layer's index within its stack as the group `index`.
        read: `layer -> DenseFFN`; raises `AttributeError` when the layer is not shaped as expected.
        splice: `(layer, block) -> None`; puts the MoE block in place of the layer's FFN.
        seq_first: the layers take `(seq_len, batch, hidden)`.
        is_ffn_layer: optional filter for layers the pattern cannot tell apart (T5 sub-layers).
        stack: the stack of every layer ("encoder" or "decoder") where the module names do not say it
            (ModernBERT's and DistilBERT's encoder layers live under `layers`/`transformer`); None reads
            it from the names with `stack_of`.
    """

    layer_pattern: str
    read: Callable[[nn.Module], DenseFFN]
    splice: Callable[[nn.Module, nn.Module], None]
    seq_first: bool = False
    is_ffn_layer: Callable[[nn.Module], bool] | None = None
    stack: str | None = None

    def find_layers(self, model: nn.Module) -> list[tuple[str, int, nn.Module]]:
        """`(name, index within its stack, layer)` for every FFN-owning layer, in model order."""
        pattern = re.compile(self.layer_pattern)
        found = []
        for name, module in model.named_modules():
            match = pattern.search(name)
            if match and (self.is_ffn_layer is None or self.is_ffn_layer(module)):
                found.append((name, int(match.group("index")), module))
        return found


def _linear_weights(layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    return layer.weight.detach(), None if layer.bias is None else layer.bias.detach()


def _read_bert(layer: nn.Module) -> DenseFFN:
    w_in, b_in = _linear_weights(layer.intermediate.dense)
    w_out, b_out = _linear_weights(layer.output.dense)
    return DenseFFN(w_in, b_in, None, w_out, b_out, layer.intermediate.intermediate_act_fn)


def _splice_bert(layer: nn.Module, block: nn.Module) -> None:
    layer.intermediate = block
    layer.output.dense = nn.Identity()


def _read_gpt2(layer: nn.Module) -> DenseFFN:
    mlp = layer.mlp
    # Conv1D stores (in, out); transpose to the Linear layout every spec returns.
    return DenseFFN(
        w_in=mlp.c_fc.weight.detach().t(),
        b_in=mlp.c_fc.bias.detach(),
        w_gate=None,
        w_out=mlp.c_proj.weight.detach().t(),
        b_out=mlp.c_proj.bias.detach(),
        activation=mlp.act,
        output_dropout=mlp.dropout.p,
    )


def _splice_gpt2(layer: nn.Module, block: nn.Module) -> None:
    layer.mlp = block


def _read_t5(layer: nn.Module) -> DenseFFN:
    ffn = layer.DenseReluDense
    w_out, b_out = _linear_weights(ffn.wo)
    if hasattr(ffn, "wi_0"):  # v1.1 / Flan: act(x wi_0) * (x wi_1)
        w_gate, _ = _linear_weights(ffn.wi_0)
        w_in, b_in = _linear_weights(ffn.wi_1)
    else:
        w_gate = None
        w_in, b_in = _linear_weights(ffn.wi)
    return DenseFFN(w_in, b_in, w_gate, w_out, b_out, ffn.act, dropout=ffn.dropout.p)


def _splice_t5(layer: nn.Module, block: nn.Module) -> None:
    layer.DenseReluDense = block


def _read_inline_fc(layer: nn.Module) -> DenseFFN:
    w_in, b_in = _linear_weights(layer.fc1)
    w_out, b_out = _linear_weights(layer.fc2)
    return DenseFFN(w_in, b_in, None, w_out, b_out, layer.activation_fn, dropout=float(layer.activation_dropout))


def _splice_inline_fc(layer: nn.Module, block: nn.Module) -> None:
    # The layer computes dropout(fc2(dropout(act(fc1(x)), activation_dropout))): with fc1 = the block
    # (whole FFN, activation dropout inside the experts), the rest must be identities.
    layer.fc1 = block
    layer.activation_fn = nn.Identity()
    layer.activation_dropout = 0.0
    layer.fc2 = nn.Identity()


def _split_fused(layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """A fused `(2 * ffn, hidden)` projection whose first half is activated -> (gate, b_gate, up, b_up)."""
    weight, bias = _linear_weights(layer)
    w_gate, w_in = weight.chunk(2, dim=0)  # (ffn, hidden) each
    b_gate, b_in = bias.chunk(2, dim=0) if bias is not None else (None, None)
    return w_gate, b_gate, w_in, b_in


def _read_gated_mlp(layer: nn.Module) -> DenseFFN:
    mlp = layer.mlp  # down_proj(act(gate_proj(x)) * up_proj(x))
    w_gate, b_gate = _linear_weights(mlp.gate_proj)
    w_in, b_in = _linear_weights(mlp.up_proj)
    w_out, b_out = _linear_weights(mlp.down_proj)
    return DenseFFN(w_in, b_in, w_gate, w_out, b_out, mlp.act_fn, b_gate=b_gate)


def _read_phi3(layer: nn.Module) -> DenseFFN:
    mlp = layer.mlp  # gate, up = gate_up_proj(x).chunk(2); down_proj(up * act(gate))
    w_gate, b_gate, w_in, b_in = _split_fused(mlp.gate_up_proj)
    w_out, b_out = _linear_weights(mlp.down_proj)
    return DenseFFN(w_in, b_in, w_gate, w_out, b_out, mlp.activation_fn, b_gate=b_gate)


def _read_modernbert(layer: nn.Module) -> DenseFFN:
    mlp = layer.mlp  # input, gate = Wi(x).chunk(2); Wo(drop(act(input) * gate))
    w_gate, b_gate, w_in, b_in = _split_fused(mlp.Wi)
    w_out, b_out = _linear_weights(mlp.Wo)
    return DenseFFN(w_in, b_in, w_gate, w_out, b_out, mlp.act, dropout=mlp.drop.p, b_gate=b_gate)


def _splice_mlp(layer: nn.Module, block: nn.Module) -> None:
    layer.mlp = block


def _read_distilbert(layer: nn.Module) -> DenseFFN:
    ffn = layer.ffn  # dropout(lin2(act(lin1(x))))
    w_in, b_in = _linear_weights(ffn.lin1)
    w_out, b_out = _linear_weights(ffn.lin2)
    return DenseFFN(w_in, b_in, None, w_out, b_out, ffn.activation, output_dropout=ffn.dropout.p)


def _splice_distilbert(layer: nn.Module, block: nn.Module) -> None:
    layer.ffn = block


_BERT = FFNSpec(layer_pattern=r"(^|\.)encoder\.layer\.(?P<index>\d+)$", read=_read_bert, splice=_splice_bert)
_BART = FFNSpec(
    layer_pattern=r"(^|\.)(encoder|decoder)\.layers\.(?P<index>\d+)$", read=_read_inline_fc, splice=_splice_inline_fc
)
_T5 = FFNSpec(
    layer_pattern=r"(^|\.)block\.(?P<index>\d+)\.layer\.\d+$",
    read=_read_t5,
    splice=_splice_t5,
    is_ffn_layer=lambda module: hasattr(module, "DenseReluDense"),
)
# Models with a single stack (the Llama family, ModernBERT) keep their layers in `model.layers`.
_ONE_STACK_LAYERS = r"(^|\.)layers\.(?P<index>\d+)$"
_GATED_MLP = FFNSpec(layer_pattern=_ONE_STACK_LAYERS, read=_read_gated_mlp, splice=_splice_mlp)

FFN_SPECS: dict[str, FFNSpec] = {
    # encoders
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "electra": _BERT,
    "deberta-v2": _BERT,
    "distilbert": FFNSpec(
        layer_pattern=r"(^|\.)transformer\.layer\.(?P<index>\d+)$",
        read=_read_distilbert,
        splice=_splice_distilbert,
        stack="encoder",
    ),
    "modernbert": FFNSpec(layer_pattern=_ONE_STACK_LAYERS, read=_read_modernbert, splice=_splice_mlp, stack="encoder"),
    # decoders
    "gpt2": FFNSpec(layer_pattern=r"(^|\.)h\.(?P<index>\d+)$", read=_read_gpt2, splice=_splice_gpt2),
    "llama": _GATED_MLP,
    "mistral": _GATED_MLP,
    "qwen2": _GATED_MLP,
    "qwen3": _GATED_MLP,
    "gemma": _GATED_MLP,
    "gemma2": _GATED_MLP,
    "phi3": FFNSpec(layer_pattern=_ONE_STACK_LAYERS, read=_read_phi3, splice=_splice_mlp),
    # encoder-decoders
    "t5": _T5,
    "mt5": _T5,
    "umt5": _T5,
    "bart": _BART,
    "mbart": _BART,
    "marian": _BART,
    "pegasus": _BART,
    "m2m_100": _BART,
    "fsmt": FFNSpec(layer_pattern=_BART.layer_pattern, read=_read_inline_fc, splice=_splice_inline_fc, seq_first=True),
}


def register_ffn_spec(model_type: str, spec: FFNSpec, *, overwrite: bool = False) -> None:
    """Teach `moeify` a new architecture.

    Example:
        ```python
        >>> from adamoe.patching.dense import FFN_SPECS, register_ffn_spec
        >>> register_ffn_spec("camembert", FFN_SPECS["roberta"])
        ```
    """
    if model_type in FFN_SPECS and not overwrite:
        raise ValueError(f"An FFN spec for model_type {model_type!r} exists; pass overwrite=True to replace it.")
    FFN_SPECS[model_type] = spec


def stack_of(layer_name: str) -> str:
    """'decoder' for layers of a decoder stack (and of decoder-only models), else 'encoder'."""
    if re.search(r"(^|\.)decoder\.", layer_name):
        return "decoder"
    if re.search(r"(^|\.)encoder\.", layer_name):
        return "encoder"
    return "decoder"
