"""`Experts`: the expert FFNs of one MoE layer, stored stacked, computed over sorted token-expert pairs.

Each expert has the shape, activation and inner dropout of the FFN it replaces. Weights are stacked as
`(num_experts, in_features, out_features)` (input-major, like GPT-2's Conv1D) because that is the layout
`torch._grouped_mm` multiplies rows by without a transpose. A gated FFN's two input projections (T5 v1.1's
`wi_0`/`wi_1`, Llama's `gate_proj`/`up_proj`) are one `w_in` of width `2 * ffn`, gate half first (as
transformers' fused `gate_up_proj`), so the pairs take one grouped GEMM for both. The experts know nothing of
the gating rule: they take `(tokens, expert indices, weights, active)` and return the weighted mixture.

Checkpoints written before the fusion hold a gated expert's halves as `w_gate` and `w_in` (`(E, hidden, ffn)`
each); `fuse_gated_expert_weights` rewrites such a state dict, and `adamoe.from_pretrained` applies it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .dispatch import PairLayout, combine_pairs, default_backend, grouped_linear, reference_mixture, sort_pairs


class Experts(nn.Module):
    """`num_experts` FFNs `x -> W_out(dropout(act(x W_in + b_in))) + b_out`, or for a gated FFN
    `x -> W_out(dropout(act(g) * u)) + b_out` with `[g | u] = x W_in + b_in` (gate half first).

    Args:
        num_experts: number of experts.
        hidden_size: model width `d_model`.
        ffn_size: inner width `d_ff`.
        activation: the FFN's activation module (copied).
        gated: T5 v1.1-style gated FFN `act(x W_gate) * (x W_up)` (also Llama's `gate_proj`/`up_proj`); `w_in`
            is then `(num_experts, hidden, 2 * ffn)`, the gate half first.
        bias: whether the projections have biases (BERT, GPT-2, BART, FSMT do; T5 and most gated FFNs do not;
            a gated FFN with biases has one on each half, and `b_in` is `(num_experts, 2 * ffn)`).
        dropout: dropout probability between the activation and the output projection.
        dispatch: "auto", "grouped_mm" or "loop" (see `adamoe.moe.dispatch`).

    Example:
        ```python
        >>> experts = Experts(num_experts=4, hidden_size=8, ffn_size=16, activation=nn.GELU())
        >>> x = torch.randn(3, 8)
        >>> index = torch.tensor([[0, 1], [2, 3], [1, 0]])
        >>> weights, active = torch.ones(3, 2) / 2, torch.tensor([[True, True], [True, False], [True, True]])
        >>> experts(x, index, weights, active).shape
        torch.Size([3, 8])
        ```
    """

    def __init__(
        self,
        *,
        num_experts: int,
        hidden_size: int,
        ffn_size: int,
        activation: nn.Module,
        gated: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
        dispatch: str = "auto",
    ) -> None:
        super().__init__()
        self.num_experts, self.hidden_size, self.ffn_size = num_experts, hidden_size, ffn_size
        self.activation = copy.deepcopy(activation)
        self.dropout = nn.Dropout(dropout)
        self.dispatch = dispatch
        self.gated = gated
        e, d, f = num_experts, hidden_size, ffn_size
        f_in = 2 * f if gated else f
        self.w_in = nn.Parameter(torch.empty(e, d, f_in))
        self.w_out = nn.Parameter(torch.empty(e, f, d))
        self.b_in = nn.Parameter(torch.zeros(e, f_in)) if bias else None
        self.b_out = nn.Parameter(torch.zeros(e, d)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """Random init (the paper's choice): normal weights as in BERT/GPT-2 initialisation, zero biases."""
        for weight in (self.w_in, self.w_out):
            nn.init.normal_(weight, std=std)
        for bias in (self.b_in, self.b_out):
            if bias is not None:
                nn.init.zeros_(bias)

    def _load_from_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str, *args, **kwargs) -> None:
        # Any load_state_dict accepts the unfused halves of older checkpoints: fuse them in place before the
        # parameters are matched. (An older Trainer checkpoint's optimizer state keeps the halves apart, so it
        # does not resume; its weights load.)
        if self.gated and prefix + "w_gate" in state_dict:
            own = {k[len(prefix) :]: state_dict.pop(k) for k in list(state_dict) if k.startswith(prefix)}
            state_dict.update({prefix + k: v for k, v in fuse_gated_expert_weights(own).items()})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _inner(self, projected: torch.Tensor) -> torch.Tensor:
        """`(rows, ffn)` from the input projection `(rows, ffn or 2 * ffn)`: the activation, or act(gate) * up."""
        if not self.gated:
            return self.activation(projected)
        gate, up = projected.chunk(2, dim=-1)
        return self.activation(gate) * up

    def backend_for(self, rows: torch.Tensor) -> str:
        if self.dispatch != "auto":
            return self.dispatch
        return default_backend(rows, self.hidden_size, self.ffn_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        expert_index: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        active: torch.Tensor | None = None,
        *,
        layout: PairLayout | None = None,
    ) -> torch.Tensor:
        """Mix the experts' outputs.

        Args:
            hidden_states: `(num_tokens, hidden)`.
            expert_index: `(num_tokens, k)` expert of each choice, any k (the router's k_max).
            weights: `(num_tokens, k)` combine weight of each choice.
            active: `(num_tokens, k)` bool, whether each choice is used; only active choices are computed.
            layout: the pairs already sorted by `adamoe.moe.dispatch.sort_pairs`, instead of the three above (what
                `MoEBlock` passes). The block calls this `forward`, never `mix` directly, so a wrapper around the
                experts (PEFT's LoRA on `w_in`/`w_out`) sees every call.

        Returns:
            `(num_tokens, hidden)`: sum over active choices of weight * expert(token).
        """
        if layout is None:
            layout = sort_pairs(expert_index, weights, active, self.num_experts)
        return self.mix(hidden_states, layout)

    def mix(self, hidden_states: torch.Tensor, layout: PairLayout) -> torch.Tensor:
        """`forward` over pairs already sorted by `adamoe.moe.dispatch.sort_pairs`: `(num_tokens, hidden)` out."""
        compute_dtype = hidden_states.dtype
        if torch.is_autocast_enabled(hidden_states.device.type):
            # grouped_mm is not on autocast's cast lists, so cast by hand the way autocast casts a Linear.
            compute_dtype = torch.get_autocast_dtype(hidden_states.device.type)
        # Cast before the gather: there are at least as many pairs as tokens.
        rows = hidden_states.to(compute_dtype).index_select(0, layout.token_index)  # (num_pairs, hidden)
        backend = self.backend_for(rows)

        def project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            bias = bias.to(compute_dtype) if bias is not None else None
            return grouped_linear(x, weight.to(compute_dtype), bias, layout, backend=backend)

        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            # (num_pairs, ffn or 2 * ffn): one grouped GEMM for both halves of a gated FFN
            inner = self._inner(project(rows, self.w_in, self.b_in))  # (num_pairs, ffn)
            pair_outputs = project(self.dropout(inner), self.w_out, self.b_out)  # (num_pairs, hidden)
            return combine_pairs(pair_outputs, layout, hidden_states.shape[0])

    def expert_forward(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        """One expert on `(rows, hidden)` in x's dtype, without dispatch (the reference path uses it)."""
        dtype = x.dtype
        b_in = self.b_in[expert].to(dtype) if self.b_in is not None else 0
        inner = self._inner(x @ self.w_in[expert].to(dtype) + b_in)
        out = self.dropout(inner) @ self.w_out[expert].to(dtype)
        return out + (self.b_out[expert].to(dtype) if self.b_out is not None else 0)

    def reference_forward(
        self, hidden_states: torch.Tensor, expert_index: torch.Tensor, weights: torch.Tensor, active: torch.Tensor
    ) -> torch.Tensor:
        """Per-token float64 computation of `forward`, for tests."""
        return reference_mixture(hidden_states, expert_index, weights, active, self.expert_forward)


def fuse_gated_expert_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with every unfused gated expert (`...experts.w_gate` beside `...experts.w_in`, `(E, hidden,
    ffn)` each, and their biases) rewritten to the fused `w_in` `(E, hidden, 2 * ffn)`, gate half first; a state
    dict without them comes back as it is. For checkpoints written before the two halves were one weight.
    """
    prefixes = [key[: -len("w_gate")] for key in state if key == "w_gate" or key.endswith("experts.w_gate")]
    if not prefixes:
        return state
    state = dict(state)
    for prefix in prefixes:  # "...experts."
        for half in ("w", "b"):
            gate = state.pop(f"{prefix}{half}_gate", None)
            if gate is None:
                continue
            if f"{prefix}{half}_in" not in state:
                raise KeyError(f"{prefix}{half}_gate has no {prefix}{half}_in beside it: the checkpoint is damaged.")
            state[f"{prefix}{half}_in"] = torch.cat([gate, state[f"{prefix}{half}_in"]], dim=-1)
    return state
