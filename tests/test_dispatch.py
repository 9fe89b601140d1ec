"""Fast dispatch against the per-token float64 reference, and the cost claim: work follows the pairs."""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from adamoe.moe.experts import Experts

BACKENDS = ["loop", "grouped_mm"]


def make_experts(gated: bool, bias: bool, backend: str, num_experts: int = 5, dtype=torch.float32) -> Experts:
    torch.manual_seed(0)
    experts = Experts(
        num_experts=num_experts,
        hidden_size=16,
        ffn_size=24,
        activation=nn.GELU(),
        gated=gated,
        bias=bias,
        dispatch=backend,
    )
    with torch.no_grad():  # non-zero biases so they are checked too
        for p in experts.parameters():
            p.normal_(std=0.3)
    return experts.to(dtype)


def routing(num_tokens: int, num_experts: int, seed: int = 0, skip_expert: int | None = 3):
    g = torch.Generator().manual_seed(seed)
    index = torch.stack([torch.randperm(num_experts, generator=g)[:2] for _ in range(num_tokens)])
    if skip_expert is not None:  # an expert that receives no token at all
        index[index == skip_expert] = (skip_expert + 1) % num_experts
        index[:, 1] = torch.where(index[:, 0] == index[:, 1], (index[:, 0] + 2) % num_experts, index[:, 1])
    active = torch.stack([torch.ones(num_tokens, dtype=torch.bool), torch.rand(num_tokens, generator=g) < 0.4], -1)
    weights = torch.rand(num_tokens, 2, generator=g) * active
    return index, weights, active


def assert_matches_float64_reference(gated, bias, backend, num_experts, index, weights, active):
    """Outputs and gradients (input, combine weights, every parameter) of the dispatch against the float64
    per-token reference on the same weights and routing."""
    experts = make_experts(gated, bias, backend, num_experts=num_experts)
    num_tokens = index.shape[0]
    x = torch.randn(num_tokens, 16, requires_grad=True)
    w = weights.clone().requires_grad_()
    out = experts(x, index, w, active)
    upstream = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, w, *experts.parameters()], upstream)

    x64 = x.detach().double().requires_grad_()
    w64 = weights.double().requires_grad_()
    ref_experts = make_experts(gated, bias, "loop", num_experts=num_experts).double()
    ref = ref_experts.reference_forward(x64, index, w64, active)
    ref_grads = torch.autograd.grad(ref, [x64, w64, *ref_experts.parameters()], upstream.double())

    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gated,bias", [(False, True), (True, False), (True, True)])
def test_outputs_and_gradients_equal_the_float64_reference(backend, gated, bias):
    index, weights, active = routing(40, 5)
    assert_matches_float64_reference(gated, bias, backend, 5, index, weights, active)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inactive_pairs_cost_nothing_and_change_nothing(backend):
    experts = make_experts(False, True, backend)
    index, weights, active = routing(30, 5)
    garbage = weights.clone()
    garbage[~active] = 123.0  # weights of unused second choices must never be read
    torch.testing.assert_close(
        experts(torch.ones(30, 16), index, garbage, active), experts(torch.ones(30, 16), index, weights, active)
    )


def expert_flops(experts: Experts, num_tokens: int, second_share: float) -> int:
    index, weights, active = routing(num_tokens, experts.num_experts, skip_expert=None)
    active[:, 1] = torch.arange(num_tokens) < int(second_share * num_tokens)
    with FlopCounterMode(display=False) as counter:
        experts(torch.randn(num_tokens, 16), index, weights, active)
    return counter.get_total_flops()


def test_matmul_flops_are_exactly_proportional_to_active_pairs():
    experts = make_experts(False, True, "loop")
    per_pair = 2 * (16 * 24) * 2  # two projections, 2 FLOPs per multiply-add
    for share in (0.0, 0.25, 1.0):
        pairs = 64 + int(share * 64)
        assert expert_flops(experts, 64, share) == per_pair * pairs


class MatmulCount(TorchDispatchMode):
    """Counts the matrix multiplies (mm, addmm, bmm, grouped mm) that run."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in {"mm", "addmm", "bmm", "_grouped_mm"}:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_a_gated_expert_multiplies_once_for_both_halves_gate_half_first():
    experts = make_experts(True, True, "loop", num_experts=5)
    index, weights, active = routing(40, 5)
    x = torch.randn(40, 16)
    with torch.no_grad(), MatmulCount() as counter:
        out = experts(x, index, weights, active)
    used = index[active].unique().numel()
    assert counter.count == 2 * used  # per expert: [gate | up] in one multiply, then the output projection
    # By hand, token by token: act(x W_gate + b_gate) * (x W_up + b_up), the gate the first ffn columns of w_in.
    f = experts.ffn_size
    want = torch.zeros_like(out)
    with torch.no_grad():
        for t, slot in active.nonzero().tolist():
            e = int(index[t, slot])
            w, b = experts.w_in[e], experts.b_in[e]
            inner = nn.functional.gelu(x[t] @ w[:, :f] + b[:f]) * (x[t] @ w[:, f:] + b[f:])
            want[t] += weights[t, slot] * (inner @ experts.w_out[e] + experts.b_out[e])
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


class LargestAllocation(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_tokens_by_experts_by_hidden_intermediate(backend):
    num_tokens, num_experts = 64, 16
    experts = Experts(num_experts=num_experts, hidden_size=16, ffn_size=24, activation=nn.ReLU(), dispatch=backend)
    index, weights, active = routing(num_tokens, num_experts, skip_expert=None)
    x = torch.randn(num_tokens, 16, requires_grad=True)
    with LargestAllocation() as mode:
        experts(x, index, weights, active).sum().backward()
    # The largest tensors are the expert weights themselves; activations are at most pairs x ffn.
    biggest_activation = 2 * num_tokens * 24
    assert mode.largest <= max(biggest_activation, num_experts * 16 * 24)
    assert mode.largest < num_tokens * num_experts * 16


def test_bf16_autocast_stays_close_to_float32():
    experts = make_experts(False, True, "loop")
    index, weights, active = routing(40, 5)
    x = torch.randn(40, 16)
    want = experts(x, index, weights, active)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = experts(x, index, weights, active)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2), (torch.float16, 3e-3)])
def test_cuda_dispatch_equals_reference(backend, dtype, tol):
    experts = make_experts(False, True, backend).cuda().to(dtype)
    index, weights, active = routing(256, 5)
    x = torch.randn(256, 16, device="cuda", dtype=dtype, requires_grad=True)
    out = experts(x, index.cuda(), weights.cuda().to(dtype), active.cuda())
    out.float().square().sum().backward()
    ref_experts = make_experts(False, True, "loop").double()
    x64 = x.detach().cpu().double().requires_grad_()
    ref = ref_experts.reference_forward(x64, index, weights.double(), active)
    ref.square().sum().backward()
    torch.testing.assert_close(out.double().cpu(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(x.grad.double().cpu(), x64.grad, rtol=tol * 10, atol=tol * 10)
    grads = [p.grad.double().cpu() for p in experts.parameters()]
    for got, want in zip(grads, [p.grad for p in ref_experts.parameters()], strict=True):
        torch.testing.assert_close(got, want, rtol=tol * 10, atol=tol * 10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_takes_the_fused_kernel_only_where_torch_has_one():
    from adamoe.moe.dispatch import default_backend

    hopper = torch.cuda.get_device_capability() >= (9, 0)
    bf16 = torch.empty(4, 16, device="cuda", dtype=torch.bfloat16)
    assert default_backend(bf16, 16, 24) == ("grouped_mm" if hopper else "loop")
    assert default_backend(bf16, 16, 20) == "loop"  # a 40-byte row stride is not 16-byte aligned
    assert default_backend(bf16.float(), 16, 24) == "loop"
    assert default_backend(bf16.cpu(), 16, 24) == "loop"


class ScalarReads(TorchDispatchMode):
    """Counts scalar read-backs to the host (`.item()`, `bool(tensor)`, `if tensor:`)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("broken_router", [False, True])
def test_an_moe_layer_reads_back_to_the_host_once_per_forward(monkeypatch, broken_router):
    # On CUDA every read-back is a synchronisation; the router's finiteness check must share the one the
    # pair counts need (a list read-back, which dispatches no scalar op and is counted here by hand).
    from tiny_models import arch_by_name

    import adamoe
    from adamoe.moe.router import RouterNumericsError

    arch = arch_by_name("bert")
    block = adamoe.moe_blocks(adamoe.moeify(arch.build(), adamoe.MoEConfig(num_experts=4)))[0][1]
    if broken_router:
        with torch.no_grad():
            block.router.weight[0, 0] = float("nan")
    list_reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: list_reads.append(self.shape) or tolist(self))
    x = torch.randn(2, 5, arch.config.hidden_size)
    with ScalarReads() as scalar_reads:
        if broken_router:
            with pytest.raises(RouterNumericsError, match="bert.encoder.layer.0"):
                block(x)
        else:
            block(x).sum().backward()
    assert scalar_reads.count == 0
    assert list_reads == [torch.Size([4 + 2])]  # the expert end offsets, the inactive tail and the check


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_an_moe_layer_synchronises_once_per_forward_on_cuda():
    import warnings

    from tiny_models import arch_by_name

    import adamoe

    arch = arch_by_name("bert")
    block = adamoe.moe_blocks(adamoe.moeify(arch.build(), adamoe.MoEConfig(num_experts=4)))[0][1].cuda()
    x = torch.randn(2, 5, arch.config.hidden_size, device="cuda")
    block(x)  # warm-up: lazy initialisation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            block(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len([w for w in caught if "synchroniz" in str(w.message)]) == 1


def routing_k(num_tokens: int, num_experts: int, top_k: int, seed: int = 0, used: torch.Tensor | None = None):
    """Distinct experts per token, each token using a random prefix of its `top_k` choices (or `used` of them)."""
    g = torch.Generator().manual_seed(seed)
    index = torch.stack([torch.randperm(num_experts, generator=g)[:top_k] for _ in range(num_tokens)])
    if used is None:
        used = torch.randint(1, top_k + 1, (num_tokens,), generator=g)
    active = torch.arange(top_k) < used.unsqueeze(-1)  # (num_tokens, top_k), a prefix
    weights = torch.rand(num_tokens, top_k, generator=g) * active
    return index, weights, active


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("top_k", [2, 4, 8])
@pytest.mark.parametrize("gated,bias", [(False, True), (True, False)])
def test_k_max_outputs_and_gradients_equal_the_float64_reference(backend, top_k, gated, bias):
    index, weights, active = routing_k(48, 10, top_k)
    assert_matches_float64_reference(gated, bias, backend, 10, index, weights, active)


@pytest.mark.parametrize("top_k", [4, 8])
def test_matmul_flops_follow_the_active_pairs_for_any_k_max(top_k):
    experts = make_experts(False, True, "loop", num_experts=10)
    per_pair = 2 * (16 * 24) * 2  # two projections, 2 FLOPs per multiply-add
    for used in (torch.ones(64, dtype=torch.long), torch.arange(64) % top_k + 1, torch.full((64,), top_k)):
        index, weights, active = routing_k(64, 10, top_k, used=used)
        with FlopCounterMode(display=False) as counter:
            experts(torch.randn(64, 16), index, weights, active)
        assert counter.get_total_flops() == per_pair * int(used.sum())


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_tokens_by_k_max_by_hidden_buffer(backend):
    num_tokens, num_experts, top_k = 256, 8, 8
    experts = Experts(num_experts=num_experts, hidden_size=16, ffn_size=24, activation=nn.ReLU(), dispatch=backend)
    used = torch.where(torch.arange(num_tokens) % 2 == 0, 1, 2)  # 1.5 experts per token of 8 possible
    index, weights, active = routing_k(num_tokens, num_experts, top_k, used=used)
    x = torch.randn(num_tokens, 16, requires_grad=True)
    with LargestAllocation() as mode:
        experts(x, index, weights, active).sum().backward()
    num_pairs = int(used.sum())
    assert mode.largest <= max(num_pairs * 24, num_experts * 16 * 24)
    assert mode.largest < num_tokens * top_k * 16


@pytest.mark.parametrize("top_k", [2, 4, 8])
def test_the_fixed_order_combine_equals_the_float64_reference(top_k, monkeypatch):
    """The combine CUDA uses (pairs summed per token in slot order, no atomics), run here on CPU."""
    import functools

    import adamoe.moe.experts
    from adamoe.moe.dispatch import combine_pairs

    monkeypatch.setattr(adamoe.moe.experts, "combine_pairs", functools.partial(combine_pairs, fixed_order=True))
    index, weights, active = routing_k(48, 10, top_k)
    assert_matches_float64_reference(True, True, "loop", 10, index, weights, active)
