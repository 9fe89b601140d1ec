"""Dropless dispatch of token-expert pairs: the part that turns a skipped expert into saved compute.

Each token has up to two (token, expert) pairs. Only the active pairs are kept and sorted by expert, so
the rows of one expert are contiguous, and every expert runs one matrix product over its own rows. The
cost therefore follows the number of active pairs: a token on one expert costs half a token on two. No
`(tokens, experts, hidden)` tensor is ever built, and no expert ever sees a token it was not given.

Backends (all equal to `reference_mixture`, a per-token float64 loop, in outputs and gradients):
- `grouped_mm`: one `torch._grouped_mm` call per projection over all experts (CUDA Hopper kernels;
  torch also ships a CPU implementation).
- `loop`: one `matmul` per non-empty expert over its contiguous slice; works on every device and dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PairLayout:
    """The active token-expert pairs, sorted by expert.

    Attributes:
        token_index: `(num_pairs,)` the token each sorted pair reads from and writes back to.
        expert_index: `(num_pairs,)` the expert of each sorted pair (non-decreasing).
        weights: `(num_pairs,)` the pair's combine weight.
        counts: `(num_experts,)` pairs per expert.
        offsets: `(num_experts,)` int32 end offset of each expert's rows, as `torch._grouped_mm` wants.
    """

    token_index: torch.Tensor
    expert_index: torch.Tensor
    weights: torch.Tensor
    counts: torch.Tensor
    offsets: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return self.token_index.shape[0]


def sort_pairs(
    expert_index: torch.Tensor, weights: torch.Tensor, active: torch.Tensor, num_experts: int
) -> PairLayout:
    """Keep the active pairs of `(num_tokens, k)` routing tensors and sort them by expert."""
    num_tokens, k = expert_index.shape
    # The one device-to-host synchronisation of the MoE forward: the number of active pairs decides
    # the shape of everything after it, which is what makes the cost proportional to that number.
    flat_active = active.reshape(-1).nonzero().squeeze(-1)  # (num_pairs,)
    pair_expert = expert_index.reshape(-1)[flat_active]
    # Stable sort keeps each expert's tokens in sequence order: deterministic, and cache-friendly gathers.
    pair_expert, order = pair_expert.sort(stable=True)
    flat_pairs = flat_active[order]
    counts = torch.bincount(pair_expert, minlength=num_experts)
    return PairLayout(
        token_index=flat_pairs.div(k, rounding_mode="floor"),
        expert_index=pair_expert,
        weights=weights.reshape(-1)[flat_pairs],
        counts=counts,
        offsets=counts.cumsum(0).to(torch.int32),
    )


def grouped_mm_supported(tensor: torch.Tensor) -> bool:
    """Whether `torch._grouped_mm` can run on this tensor's device and dtype."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if tensor.device.type == "cuda":
        # The Hopper kernels need sm90; torch's fallback for older GPUs is slower than the loop.
        return tensor.dtype in (torch.bfloat16, torch.float16, torch.float32) and torch.cuda.get_device_capability(
            tensor.device
        ) >= (9, 0)
    # The CPU implementation takes float32 only; half types also need 16-byte aligned strides.
    return tensor.device.type == "cpu" and tensor.dtype == torch.float32


def _contiguous_grad(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous()


def grouped_linear(
    rows: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    layout: PairLayout,
    *,
    backend: str,
    split_sizes: list[int] | None = None,
) -> torch.Tensor:
    """Multiply each expert's contiguous rows by that expert's weight.

    Args:
        rows: `(num_pairs, in_features)`, sorted by expert.
        weight: `(num_experts, in_features, out_features)`.
        bias: `(num_experts, out_features)` or None.
        layout: the sorted pairs.
        backend: "grouped_mm" or "loop".
        split_sizes: `layout.counts` as a Python list (the loop needs it; computed once per block).

    Returns:
        `(num_pairs, out_features)`.
    """
    if backend == "grouped_mm":
        out = torch._grouped_mm(rows, weight, offs=layout.offsets)  # (num_pairs, out_features)
        if out.requires_grad:
            # Its backward rejects the broadcast (stride-0) gradients that some losses produce.
            out.register_hook(_contiguous_grad)
        if bias is not None:
            out = out + bias[layout.expert_index]
        return out
    if backend != "loop":
        raise ValueError(f"Unknown dispatch backend {backend!r}.")
    if split_sizes is None:
        split_sizes = layout.counts.tolist()
    pieces = []
    for expert, chunk in enumerate(rows.split(split_sizes)):
        if chunk.shape[0] == 0:
            continue
        piece = chunk @ weight[expert]
        pieces.append(piece + bias[expert] if bias is not None else piece)
    if not pieces:
        return rows.new_zeros(0, weight.shape[-1])
    return torch.cat(pieces)


def combine_pairs(pair_outputs: torch.Tensor, layout: PairLayout, num_tokens: int) -> torch.Tensor:
    """Weighted sum of each token's pair outputs: `(num_pairs, hidden)` -> `(num_tokens, hidden)`.

    Accumulates in float32 so a two-expert token under bf16 does not lose the smaller contribution.
    """
    weighted = pair_outputs.float() * layout.weights.float().unsqueeze(-1)
    out = torch.zeros(num_tokens, pair_outputs.shape[-1], dtype=torch.float32, device=pair_outputs.device)
    return out.index_add_(0, layout.token_index, weighted).to(pair_outputs.dtype)


def reference_mixture(
    hidden_states: torch.Tensor,
    expert_index: torch.Tensor,
    weights: torch.Tensor,
    active: torch.Tensor,
    expert_fn,
) -> torch.Tensor:
    """The dumb reference: every token, every active choice, one at a time, in float64.

    `expert_fn(x, e)` computes expert `e` on `(1, hidden)` float64 rows. Every fast path is tested
    against this in outputs and gradients.
    """
    x64 = hidden_states.double()
    rows = []
    for token in range(x64.shape[0]):
        total = torch.zeros_like(x64[token])
        for slot in range(expert_index.shape[1]):
            if bool(active[token, slot]):
                expert = int(expert_index[token, slot])
                total = total + weights[token, slot].double() * expert_fn(x64[token : token + 1], expert)[0]
        rows.append(total)
    return torch.stack(rows)
