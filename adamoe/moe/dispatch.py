"""Dropless dispatch of token-expert pairs: the part that turns a skipped expert into saved compute.

Each token has up to k_max (token, expert) pairs. Only the active pairs are kept and sorted by expert, so
the rows of one expert are contiguous, and every expert runs one matrix product over its own rows. The
cost therefore follows the number of active pairs: a token on one expert costs 1 / k_max of a token on all
k_max. No `(tokens, k_max, hidden)` or `(tokens, experts, hidden)` tensor is ever built, and no expert ever
sees a token it was not given: what is sorted is one expert index per slot, `(tokens * k_max,)`.

Backends (all equal to `reference_mixture`, a per-token float64 loop, in outputs and gradients):
- `grouped_mm`: one `torch._grouped_mm` call per projection over all experts (a fused kernel on Hopper
  GPUs in bfloat16; elsewhere torch falls back to a per-group loop).
- `loop`: one GEMM per non-empty expert over its contiguous slice, written straight into one output and,
  in the backward, into one weight gradient (`_LoopLinear`); works on every device and dtype.

Host synchronisation: one per call, in `sort_pairs`, where the per-expert row counts are read back (the
number of active pairs is a shape); the MoE block's router check rides in the same read-back. The
dispatch code syncs nowhere else, forward or backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
        split_sizes: `counts` as a Python list, read from the device once (the loop backend slices by it).
        check_passed: the caller's `check` tensor as read back with the counts (True when none was given).
        slot_index: `(num_pairs,)` each sorted pair's position in the flattened `(num_tokens, k)` routing, so
            `token_index * k + slot`; ordering the pairs by it lists each token's pairs in slot order.
        pairs_per_token: `(num_tokens,)` active pairs of each token.
    """

    token_index: torch.Tensor
    expert_index: torch.Tensor
    weights: torch.Tensor
    counts: torch.Tensor
    offsets: torch.Tensor
    split_sizes: list[int] = field(default_factory=list)
    check_passed: bool = True
    slot_index: torch.Tensor | None = None
    pairs_per_token: torch.Tensor | None = None

    @property
    def num_pairs(self) -> int:
        return self.token_index.shape[0]


def sort_pairs(
    expert_index: torch.Tensor,
    weights: torch.Tensor,
    active: torch.Tensor,
    num_experts: int,
    *,
    check: torch.Tensor | None = None,
) -> PairLayout:
    """Keep the active pairs of `(num_tokens, k)` routing tensors and sort them by expert.

    `check` is an optional 0-dim bool tensor the caller needs on the host (the router's finiteness); it
    travels in the same read-back as the counts, so checking it costs no second synchronisation. Its value
    comes back as `layout.check_passed`.
    """
    num_tokens, k = expert_index.shape
    # Inactive pairs get the key `num_experts`, so one sort puts the active pairs first, grouped by
    # expert; a stable sort keeps each expert's tokens in sequence order (deterministic, and the
    # gathers read memory forwards).
    key = torch.where(active, expert_index, num_experts).reshape(-1)  # (num_tokens * k,)
    sorted_key, order = key.sort(stable=True)
    # End offset of every expert's rows (and of the inactive tail) by binary search in the sorted keys:
    # no `bincount`, which on CUDA reads the maximum back to the host.
    ends = torch.searchsorted(sorted_key, torch.arange(num_experts + 1, device=key.device), right=True)
    # The one device-to-host synchronisation of the dispatch: the number of active pairs decides the
    # shape of everything after it, which is what makes the cost proportional to that number.
    if check is not None:
        *host_ends, check_passed = torch.cat([ends, check.reshape(1).to(ends.dtype)]).tolist()
    else:
        host_ends, check_passed = ends.tolist(), 1
    num_pairs = host_ends[num_experts - 1]
    flat_pairs = order[:num_pairs]  # (num_pairs,) index into the flattened (num_tokens, k) routing
    counts = ends[:num_experts].diff(prepend=ends.new_zeros(1))
    return PairLayout(
        token_index=flat_pairs.div(k, rounding_mode="floor"),
        expert_index=sorted_key[:num_pairs],
        weights=weights.reshape(-1)[flat_pairs],
        counts=counts,
        offsets=ends[:num_experts].to(torch.int32),
        split_sizes=[end - start for start, end in zip([0, *host_ends[:-2]], host_ends[:-1], strict=True)],
        check_passed=bool(check_passed),
        slot_index=flat_pairs,
        pairs_per_token=active.sum(dim=1),
    )


def grouped_mm_fast(rows: torch.Tensor, *widths: int) -> bool:
    """Whether `torch._grouped_mm` runs its fused kernel on these rows and projection widths.

    That kernel exists on CUDA sm90+ for bfloat16 only, and its TMA loads need every row stride
    16-byte aligned (unaligned strides once gave silently wrong results, pytorch#150374). Anything else
    goes to torch's fallback, a per-group loop that reads the offsets back to the host: no better than
    the `loop` backend, and slower.
    """
    if not hasattr(torch, "_grouped_mm") or rows.device.type != "cuda" or rows.dtype != torch.bfloat16:
        return False
    alignment = 16 // rows.element_size()
    return torch.cuda.get_device_capability(rows.device) >= (9, 0) and all(w % alignment == 0 for w in widths)


def default_backend(rows: torch.Tensor, *widths: int) -> str:
    """The backend `dispatch="auto"` picks for these rows and projection widths.

    `grouped_mm` where torch has a fused kernel for it (one launch per projection instead of one per
    expert, no host-known split needed); `loop` everywhere else. On CPU the two measure the same, since
    torch's CPU `_grouped_mm` also runs one GEMM per group, and the loop takes every dtype (figures:
    `python -m adamoe.bench`, docs/performance.md).
    """
    return "grouped_mm" if grouped_mm_fast(rows, *widths) else "loop"


def _contiguous_grad(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous()


class _LoopLinear(torch.autograd.Function):
    """`out[rows of e] = rows[rows of e] @ weight[e] + bias[e]` for every expert, one GEMM each.

    Autograd through `weight[e]` would give each expert's gradient as a full `(num_experts, in, out)`
    zero tensor with one slice filled (`SelectBackward`), and then sum them: `num_experts` times the
    weight-gradient memory traffic. Here every GEMM writes straight into its slice of one output, one
    input gradient and one weight gradient, with no `cat` and no zero-filled copies.
    """

    @staticmethod
    def forward(ctx, rows, weight, bias, split_sizes):
        ctx.set_materialize_grads(False)
        out = rows.new_empty(rows.shape[0], weight.shape[-1])  # (num_pairs, out_features)
        for expert, (start, end) in _spans(split_sizes):
            if bias is None:
                torch.mm(rows[start:end], weight[expert], out=out[start:end])
            else:
                torch.addmm(bias[expert], rows[start:end], weight[expert], out=out[start:end])
        ctx.save_for_backward(rows, weight)
        ctx.split_sizes, ctx.has_bias = split_sizes, bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        if grad_out is None:
            return None, None, None, None
        rows, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()  # (num_pairs, out_features); some losses hand stride-0 grads
        spans = list(_spans(ctx.split_sizes))
        grad_rows = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_rows = torch.empty_like(rows)  # (num_pairs, in_features)
            for expert, (start, end) in spans:
                torch.mm(grad_out[start:end], weight[expert].t(), out=grad_rows[start:end])
        if ctx.needs_input_grad[1]:
            grad_weight = _per_expert(weight, spans, lambda s, e, out: torch.mm(rows[s:e].t(), grad_out[s:e], out=out))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            shape = (weight.shape[0], weight.shape[-1])
            grad_bias = _per_expert(
                weight.new_empty(shape), spans, lambda s, e, out: torch.sum(grad_out[s:e], dim=0, out=out)
            )
        return grad_rows, grad_weight, grad_bias, None


def _spans(split_sizes: list[int]):
    """`(expert, (start, end))` for every expert with at least one row."""
    start = 0
    for expert, size in enumerate(split_sizes):
        if size:
            yield expert, (start, start + size)
        start += size


def _per_expert(like: torch.Tensor, spans: list, compute) -> torch.Tensor:
    """A tensor shaped like `like` whose slice `e` is `compute(start, end, out=slice)`, zero for idle experts."""
    result = torch.empty_like(like)
    busy = set()
    for expert, (start, end) in spans:
        compute(start, end, result[expert])
        busy.add(expert)
    for expert in range(result.shape[0]):
        if expert not in busy:
            result[expert].zero_()
    return result


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
        split_sizes: pairs per expert as a Python list (default `layout.split_sizes`).

    Returns:
        `(num_pairs, out_features)`.
    """
    if backend == "grouped_mm":
        out = torch._grouped_mm(rows, weight, offs=layout.offsets)  # (num_pairs, out_features)
        if out.requires_grad:
            # Its backward rejects the broadcast (stride-0) gradients that some losses produce.
            out.register_hook(_contiguous_grad)
        if bias is not None:
            # index_select's backward is an index_add (atomics on CUDA); indexing's is a sorting index_put.
            out = out + bias.index_select(0, layout.expert_index)
        return out
    if backend != "loop":
        raise ValueError(f"Unknown dispatch backend {backend!r}.")
    if split_sizes is None:
        split_sizes = layout.split_sizes or layout.counts.tolist()
    return _LoopLinear.apply(rows.contiguous(), weight, bias, split_sizes)


def combine_pairs(
    pair_outputs: torch.Tensor, layout: PairLayout, num_tokens: int, *, fixed_order: bool | None = None
) -> torch.Tensor:
    """Weighted sum of each token's pair outputs: `(num_pairs, hidden)` -> `(num_tokens, hidden)`.

    Accumulates in float32 so a two-expert token under bf16 does not lose the smaller contribution.

    On CPU `index_add_` adds the pairs in order. On CUDA it adds with atomics, in whatever order the threads
    arrive, so two runs with the same seed could differ in the last bits; there (`fixed_order`, the default on
    CUDA) the pairs are put in token-then-slot order and each token's at most k_max rows are summed as one
    segment, in a fixed order. Both cost in proportion to the active pairs.
    """
    weighted = pair_outputs.float() * layout.weights.float().unsqueeze(-1)  # (num_pairs, hidden)
    if fixed_order is None:
        fixed_order = pair_outputs.is_cuda
    if fixed_order and layout.slot_index is not None and layout.pairs_per_token is not None:
        by_token = layout.slot_index.argsort()  # (num_pairs,) token-major, slots in gate-probability order
        summed = torch.segment_reduce(weighted[by_token], "sum", lengths=layout.pairs_per_token, axis=0)
        return summed.to(pair_outputs.dtype)  # (num_tokens, hidden)
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
