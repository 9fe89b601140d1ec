import pytest
import torch

from adamoe import MoEConfig
from adamoe.moe.router import Router, combine_weights, select_experts, select_top_k


def rule_by_hand(probs, gating, threshold, threshold_on):
    """The gating rule written out token by token, in float64."""
    index, second = [], []
    for row in probs.double().tolist():
        order = sorted(range(len(row)), key=lambda e: (-row[e], e))
        p1, p2 = row[order[0]], row[order[1]]
        gap = (p1 - p2) / (p1 + p2) if threshold_on == "normalized" else p1 - p2
        index.append(order[:2])
        second.append({"top1": False, "top2": True, "adaptive": gap <= threshold}[gating])
    return torch.tensor(index), torch.tensor(second)


@pytest.mark.parametrize("threshold_on", ["normalized", "raw"])
@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.2, 0.6])
def test_adaptive_rule_matches_a_straightforward_reimplementation(threshold_on, threshold):
    torch.manual_seed(0)
    probs = (torch.randn(500, 8) * 2).softmax(-1)
    index, second = select_experts(probs, gating="adaptive", threshold=threshold, threshold_on=threshold_on)
    ref_index, ref_second = rule_by_hand(probs, "adaptive", threshold, threshold_on)
    assert torch.equal(index, ref_index) and torch.equal(second, ref_second)
    if 0 < threshold < 0.6:
        assert 0 < second.float().mean() < 1  # the case exercises both outcomes


def test_normalized_and_raw_readings_differ_as_defined():
    probs = torch.tensor([[0.30, 0.20, 0.50 - 1e-9, 1e-9]]).div(1.0)
    # p1 = 0.5, p2 = 0.3: raw gap 0.2, normalised gap 0.2 / 0.8 = 0.25
    _, raw = select_experts(probs, gating="adaptive", threshold=0.22, threshold_on="raw")
    _, norm = select_experts(probs, gating="adaptive", threshold=0.22, threshold_on="normalized")
    assert raw.tolist() == [True] and norm.tolist() == [False]


def test_threshold_zero_takes_only_exact_ties():
    probs = torch.tensor([[0.4, 0.4, 0.2], [0.41, 0.39, 0.2]])
    _, second = select_experts(probs, gating="adaptive", threshold=0.0)
    assert second.tolist() == [True, False]


@pytest.mark.parametrize("threshold_on", ["normalized", "raw"])
def test_top1_and_top2_are_adaptive_at_the_extremes(threshold_on):
    probs = (torch.randn(300, 16) * 3).softmax(-1)
    for gating, threshold in (("top1", -0.01), ("top2", 1.0), ("top2", 7.0)):
        got = select_experts(probs, gating=gating, threshold=0.1, threshold_on=threshold_on)
        adaptive = select_experts(probs, gating="adaptive", threshold=threshold, threshold_on=threshold_on)
        assert torch.equal(got[0], adaptive[0]) and torch.equal(got[1], adaptive[1])


def test_combine_weights():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.45, 0.44, 0.11]])
    index = torch.tensor([[0, 1], [0, 1]])
    second = torch.tensor([False, True])
    gate = combine_weights(probs, index, second, combine="gate")
    assert torch.allclose(gate, torch.tensor([[0.6, 0.0], [0.45, 0.44]]))
    norm = combine_weights(probs, index, second, combine="normalized")
    assert norm[0].tolist() == [1.0, 0.0]  # exactly 1: a one-expert token gets its expert's output
    assert torch.allclose(norm[1], torch.tensor([0.45 / 0.89, 0.44 / 0.89]))


@pytest.mark.parametrize("combine", ["normalized", "gate"])
@pytest.mark.parametrize("gating", ["top1", "top2", "adaptive"])
def test_router_gets_a_gradient_from_the_output_in_every_mode(gating, combine):
    torch.manual_seed(0)
    router = Router(8, MoEConfig(num_experts=4, gating=gating, combine=combine, threshold=0.05))
    x = torch.randn(64, 8)
    decision = router(x)
    expert_out = torch.randn(64, 2)  # stands for the experts' outputs the weights multiply
    (decision.combine_weights * expert_out).sum().backward()
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0


def test_one_expert_tokens_pass_gradient_under_normalized_combine():
    torch.manual_seed(0)
    router = Router(8, MoEConfig(num_experts=4, gating="top1", combine="normalized"))
    decision = router(torch.randn(16, 8))
    assert torch.equal(decision.combine_weights[:, 0], torch.ones(16))
    (decision.combine_weights[:, 0] * torch.randn(16)).sum().backward()
    assert router.weight.grad.abs().sum() > 0


def test_router_computes_in_float32_under_autocast():
    router = Router(8, MoEConfig(num_experts=4)).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        decision = router(torch.randn(5, 8, dtype=torch.bfloat16))
    assert decision.probs.dtype == torch.float32


@pytest.mark.parametrize("hidden", [384, 768, 1024])
def test_the_default_router_init_starts_most_tokens_on_one_expert(hidden):
    # Layer-normed hidden states have unit-variance features. With transformers' 0.02 init the 16 gate logits are
    # so close that about half the tokens or more fall within T = 0.1 (two experts, no saving); the default starts
    # under a fifth there. (On MiniLM's real hidden states: 72% and 22%.)
    torch.manual_seed(0)
    x = torch.randn(4096, hidden)
    fractions = {}
    for std in (MoEConfig().router_init_std, 0.02):
        router = Router(hidden, MoEConfig(num_experts=16, threshold=0.1, router_init_std=std))
        fractions[std] = router(x).active[:, 1].float().mean().item()
    assert fractions[MoEConfig().router_init_std] < 0.2 < 0.4 < fractions[0.02]


def rule_by_hand_k(probs, gating, threshold, threshold_on, top_k):
    """The k_max rule written out token by token, in float64: the top-1 expert, then each further one while the
    gap to p1 is within T."""
    index, used = [], []
    for row in probs.double().tolist():
        order = sorted(range(len(row)), key=lambda e: (-row[e], e))[:top_k]
        p1, k = row[order[0]], 1
        if gating == "topk":
            k = top_k
        elif gating == "top2":
            k = 2
        elif gating == "adaptive":
            for e in order[1:]:
                gap = (p1 - row[e]) / (p1 + row[e]) if threshold_on == "normalized" else p1 - row[e]
                if gap > threshold:
                    break
                k += 1
        index.append(order)
        used.append([slot < k for slot in range(top_k)])
    return torch.tensor(index), torch.tensor(used)


@pytest.mark.parametrize("top_k", [2, 3, 4, 8])
@pytest.mark.parametrize("threshold_on", ["normalized", "raw"])
@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.3, 0.6])
def test_k_max_rule_matches_a_straightforward_reimplementation(top_k, threshold_on, threshold):
    torch.manual_seed(0)
    probs = (torch.randn(400, 16) * 1.5).softmax(-1)
    index, active = select_top_k(probs, gating="adaptive", threshold=threshold, threshold_on=threshold_on, top_k=top_k)
    ref_index, ref_active = rule_by_hand_k(probs, "adaptive", threshold, threshold_on, top_k)
    assert index.shape == active.shape == (400, top_k)
    assert torch.equal(index, ref_index) and torch.equal(active, ref_active)
    if 0 < threshold < 0.6 and threshold_on == "normalized":
        counts = active.sum(-1)
        assert counts.min() == 1 and counts.max() > 1  # the case exercises several outcomes


@pytest.mark.parametrize("threshold_on", ["normalized", "raw"])
def test_with_k_max_two_the_rule_is_the_two_expert_rule(threshold_on):
    torch.manual_seed(1)
    probs = (torch.randn(300, 8) * 2).softmax(-1)
    for gating in ("adaptive", "top1", "top2", "topk"):
        index, active = select_top_k(probs, gating=gating, threshold=0.15, threshold_on=threshold_on, top_k=2)
        two_index, second = select_experts(probs, gating=gating, threshold=0.15, threshold_on=threshold_on)
        assert torch.equal(index, two_index) and torch.equal(active[:, 1], second) and bool(active[:, 0].all())


FIXED_GATINGS = ("top1", "top2", "topk")


@pytest.mark.parametrize("top_k", [2, 4, 8])
@pytest.mark.parametrize("threshold_on", ["normalized", "raw"])
def test_below_zero_is_top1_and_from_one_up_is_fixed_top_k(top_k, threshold_on):
    probs = (torch.randn(300, 16) * 3).softmax(-1)
    fixed = {
        g: select_top_k(probs, gating=g, threshold=0.1, threshold_on=threshold_on, top_k=top_k) for g in FIXED_GATINGS
    }
    for threshold, gating in ((-0.01, "top1"), (-5.0, "top1"), (1.0, "topk"), (7.0, "topk")):
        got = select_top_k(probs, gating="adaptive", threshold=threshold, threshold_on=threshold_on, top_k=top_k)
        assert torch.equal(got[0], fixed[gating][0]) and torch.equal(got[1], fixed[gating][1])
    assert fixed["top1"][1].sum(-1).eq(1).all() and fixed["topk"][1].all()
    assert fixed["top2"][1].sum(-1).eq(2).all()  # top2 stays two experts whatever k_max


@pytest.mark.parametrize("top_k", [2, 4, 8])
@pytest.mark.parametrize("threshold_on", ["normalized", "raw"])
def test_experts_per_token_never_decrease_as_t_grows(top_k, threshold_on):
    torch.manual_seed(2)
    probs = (torch.randn(500, 16) * 2).softmax(-1)
    previous = torch.ones(500, dtype=torch.long)
    means = []
    for threshold in torch.linspace(-0.1, 1.0, 23).tolist():
        _, active = select_top_k(probs, gating="adaptive", threshold=threshold, threshold_on=threshold_on, top_k=top_k)
        used = active.sum(-1)
        assert bool((used >= previous).all())  # per token, not just on average
        # Always a prefix of the top-k_max, starting with the first choice.
        assert torch.equal(active, torch.arange(top_k) < used.unsqueeze(-1))
        previous = used
        means.append(used.float().mean().item())
    assert means[0] == 1.0 and means[-1] == top_k and len(set(means)) > 3


def test_combine_weights_over_k_selected_experts():
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
    index = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]])
    active = torch.tensor([[True, True, True, False], [True, False, False, False], [True, True, True, True]])
    gate = combine_weights(probs, index, active, combine="gate")
    torch.testing.assert_close(gate, torch.tensor([[0.4, 0.3, 0.2, 0.0], [0.7, 0, 0, 0], [0.25] * 4]))
    norm = combine_weights(probs, index, active, combine="normalized")
    torch.testing.assert_close(norm[0], torch.tensor([4 / 9, 3 / 9, 2 / 9, 0.0]))
    assert norm[1].tolist() == [1.0, 0.0, 0.0, 0.0]  # exactly 1
    torch.testing.assert_close(norm[2], torch.full((4,), 0.25))
    # The straight-through form: a one-expert token still passes a gradient to its p1.
    leaf = probs.clone().requires_grad_()
    combine_weights(leaf, index, active, combine="normalized")[1, 0].backward()
    assert leaf.grad[1, 0] != 0


@pytest.mark.parametrize("combine", ["normalized", "gate"])
@pytest.mark.parametrize("gating", ["adaptive", "topk"])
def test_a_k_max_router_routes_and_gets_a_gradient(gating, combine):
    torch.manual_seed(0)
    router = Router(8, MoEConfig(num_experts=8, top_k=4, gating=gating, combine=combine, threshold=0.3))
    decision = router(torch.randn(64, 8))
    assert decision.expert_index.shape == decision.active.shape == decision.combine_weights.shape == (64, 4)
    assert decision.top_k == 4 and torch.equal(decision.second_active, decision.num_selected >= 2)
    assert bool((decision.combine_weights[~decision.active] == 0).all())
    if gating == "topk":
        assert bool(decision.active.all())
    (decision.combine_weights * torch.randn(64, 4)).sum().backward()
    assert router.weight.grad.abs().sum() > 0


def test_a_single_expert_router_keeps_the_configured_width():
    router = Router(8, MoEConfig(num_experts=1, gating="top1", top_k=1))
    decision = router(torch.randn(5, 8))
    assert decision.expert_index.shape == (5, 1) and decision.combine_weights.tolist() == [[1.0]] * 5
    assert not bool(decision.second_active.any())
