"""`Experts`: the expert FFNs of one MoE layer, stored stacked, computed over sorted token-expert pairs.

Each expert has the shape, activation and inner dropout of the FFN it replaces. Weights are stacked as
`(num_experts, in_features, out_features)` (input-major, like GPT-2's Conv1D) because that is the layout
`torch._grouped_mm` multiplies rows by without a transpose. The experts know nothing of the gating
rule: they take `(tokens, expert indices, weights, active)` and return the weighted mixture.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .dispatch import PairLayout, combine_pairs, default_backend, grouped_linear, reference_mixture, sort_pairs


class Experts(nn.Module):
    """`num_experts` FFNs `x -> W_out(dropout(act(x W_in + b_in) [* (x W_gate)])) + b_out`.

    Args:
        num_experts: number of experts.
        hidden_size: model width `d_model`.
        ffn_size: inner width `d_ff`.
        activation: the FFN's activation module (copied).
        gated: T5 v1.1-style gated FFN: `act(x W_gate) * (x W_in)` (also Llama's `gate_proj`/`up_proj`).
        bias: whether the projections have biases (BERT, GPT-2, BART, FSMT do; T5 and most gated FFNs do not;
            a gated FFN with biases has one on each half).
        dropout: dropout probability between the activation and the output projection.
        dispatch: "auto", "grouped_mm" or "loop" (see `adamoe.dispatch`).

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
        e, d, f = num_experts, hidden_size, ffn_size
        self.w_in = nn.Parameter(torch.empty(e, d, f))
        self.w_gate = nn.Parameter(torch.empty(e, d, f)) if gated else None
        self.w_out = nn.Parameter(torch.empty(e, f, d))
        self.b_in = nn.Parameter(torch.zeros(e, f)) if bias else None
        self.b_gate = nn.Parameter(torch.zeros(e, f)) if bias and gated else None
        self.b_out = nn.Parameter(torch.zeros(e, d)) if bias else None
        self.reset_parameters()

    @property
    def gated(self) -> bool:
        return self.w_gate is not None

    def reset_parameters(self, std: float = 0.02) -> None:
        """Random init (the paper's choice): normal weights as in BERT/GPT-2 initialisation, zero biases."""
        for weight in (self.w_in, self.w_gate, self.w_out):
            if weight is not None:
                nn.init.normal_(weight, std=std)
        for bias in (self.b_in, self.b_gate, self.b_out):
            if bias is not None:
                nn.init.zeros_(bias)

    def backend_for(self, rows: torch.Tensor) -> str:
        if self.dispatch != "auto":
            return self.dispatch
        return default_backend(rows, self.hidden_size, self.ffn_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        expert_index: torch.Tensor,
        weights: torch.Tensor,
        active: torch.Tensor,
    ) -> torch.Tensor:
        """Mix the experts' outputs.

        Args:
            hidden_states: `(num_tokens, hidden)`.
            expert_index: `(num_tokens, k)` expert of each choice, any k (the router's k_max).
            weights: `(num_tokens, k)` combine weight of each choice.
            active: `(num_tokens, k)` bool, whether each choice is used; only active choices are computed.

        Returns:
            `(num_tokens, hidden)`: sum over active choices of weight * expert(token).
        """
        return self.mix(hidden_states, sort_pairs(expert_index, weights, active, self.num_experts))

    def mix(self, hidden_states: torch.Tensor, layout: PairLayout) -> torch.Tensor:
        """`forward` over pairs already sorted by `adamoe.dispatch.sort_pairs`: `(num_tokens, hidden)` out."""
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
            if self.gated:  # T5 v1.1, Llama: act(x W_gate + b_gate) * (x W_in + b_in), biases usually None
                inner = self.activation(project(rows, self.w_gate, self.b_gate)) * project(rows, self.w_in, self.b_in)
            else:
                inner = self.activation(project(rows, self.w_in, self.b_in))  # (num_pairs, ffn)
            pair_outputs = project(self.dropout(inner), self.w_out, self.b_out)  # (num_pairs, hidden)
            return combine_pairs(pair_outputs, layout, hidden_states.shape[0])

    def expert_forward(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        """One expert on `(rows, hidden)` in x's dtype, without dispatch (the reference path uses it)."""
        dtype = x.dtype
        w_in = self.w_in[expert].to(dtype)
        b_in = self.b_in[expert].to(dtype) if self.b_in is not None else 0
        if self.gated:
            b_gate = self.b_gate[expert].to(dtype) if self.b_gate is not None else 0
            inner = self.activation(x @ self.w_gate[expert].to(dtype) + b_gate) * (x @ w_in + b_in)
        else:
            inner = self.activation(x @ w_in + b_in)
        out = self.dropout(inner) @ self.w_out[expert].to(dtype)
        return out + (self.b_out[expert].to(dtype) if self.b_out is not None else 0)

    def reference_forward(
        self, hidden_states: torch.Tensor, expert_index: torch.Tensor, weights: torch.Tensor, active: torch.Tensor
    ) -> torch.Tensor:
        """Per-token float64 computation of `forward`, for tests."""
        return reference_mixture(hidden_states, expert_index, weights, active, self.expert_forward)
