import pytest
import torch

from adamoe import MoEConfig
from adamoe.router import Router, combine_weights, select_experts


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
