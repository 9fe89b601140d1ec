"""The dynamic-k routing rules (adamoe/moe/rules.py), each against a per-token float64 reference written here from
its paper's definition, and the rule as a routing setting of a patched model."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import adamoe
from adamoe.moe.config import RULE_NAMES
from adamoe.moe.router import select_top_k
from adamoe.moe.rules import RULES

# The rules whose parameter is one number (expert_threshold's are per expert: tests/test_rule_state.py).
PARAMETER_RULES = ("gap", "top_p")


def probs(num_tokens=64, num_experts=8, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(num_tokens, num_experts, generator=g, dtype=torch.float64)).softmax(-1)


def reference(p, rule, threshold, k_max, threshold_on="normalized"):
    """Per token, in plain Python: the experts in decreasing probability that the rule keeps."""
    out = []
    for row in p.tolist():
        order = sorted(range(len(row)), key=lambda e: -row[e])[:k_max]
        kept = [order[0]]
        for i in range(1, k_max):
            p1, pi = row[order[0]], row[order[i]]
            if rule == "gap":
                gap = (p1 - pi) / (p1 + pi) if threshold_on == "normalized" else p1 - pi
                keep = gap <= threshold
            else:  # top_p: take the next expert while the ones taken hold less than p
                keep = sum(row[e] for e in kept) < threshold
            if not keep:
                break
            kept.append(order[i])
        out.append(kept)
    return out


def routed(p, rule, threshold, k_max, threshold_on="normalized"):
    index, active = select_top_k(
        p, gating="adaptive", threshold=threshold, threshold_on=threshold_on, top_k=k_max, rule=rule
    )
    return [index[t][active[t]].tolist() for t in range(p.shape[0])]


def test_the_config_names_every_rule():
    assert tuple(RULES) == RULE_NAMES


@pytest.mark.parametrize("rule", PARAMETER_RULES)
@pytest.mark.parametrize("threshold", [0.05, 0.2, 0.5, 0.8])
@pytest.mark.parametrize("k_max", [2, 4])
def test_each_rule_matches_its_definition(rule, threshold, k_max):
    p = probs()
    assert routed(p, rule, threshold, k_max) == reference(p, rule, threshold, k_max)
    if rule == "gap":
        assert routed(p, rule, threshold, k_max, "raw") == reference(p, rule, threshold, k_max, "raw")


@pytest.mark.parametrize("rule", PARAMETER_RULES)
def test_the_ends_of_the_parameter_give_top1_and_top_k_max(rule):
    p = probs()
    _, low = select_top_k(p, gating="adaptive", threshold=0.0, top_k=4, rule=rule)
    _, high = select_top_k(p, gating="adaptive", threshold=1.0, top_k=4, rule=rule)
    assert low.sum(-1).tolist() == [1] * 64  # random probabilities: no exact ties
    assert high.all()


@pytest.mark.parametrize("rule", PARAMETER_RULES)
def test_a_larger_parameter_never_takes_an_expert_away(rule):
    p = probs(seed=1)
    previous = None
    for threshold in torch.linspace(0, 1, 21).tolist():
        _, active = select_top_k(p, gating="adaptive", threshold=threshold, top_k=4, rule=rule)
        if previous is not None:
            assert (active | ~previous).all() and (active >= previous).all()
        previous = active


def test_the_gap_rule_is_the_papers_rule_unchanged():
    """The default rule is bit-identical to adaptive gating as it was: the same index and the same slots."""
    p = probs(seed=2)
    assert adamoe.MoEConfig().rule == "gap"
    default = select_top_k(p, gating="adaptive", threshold=0.1, top_k=2)
    explicit = select_top_k(p, gating="adaptive", threshold=0.1, top_k=2, rule="gap")
    assert all(torch.equal(a, b) for a, b in zip(default, explicit, strict=True))
    assert routed(p, "gap", 0.1, 2) == reference(p, "gap", 0.1, 2)


def test_rules_switch_on_the_same_weights_and_travel_with_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    moe = adamoe.MoEConfig(num_experts=4, top_k=4, threshold=0.3, router_init_std=1.0)
    model = adamoe.moeify(LlamaForCausalLM(config), moe).eval()
    tokens = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(input_ids=tokens)
    gap = adamoe.routing_stats(model).experts_per_token
    adamoe.set_routing(model, rule="top_p", threshold=0.6)
    with torch.no_grad():
        model(input_ids=tokens)
    _, block = adamoe.moe_blocks(model)[0]
    expected = reference(block.last_routing.probs.double(), "top_p", 0.6, 4)
    assert [len(e) for e in expected] == block.last_routing.num_selected.tolist()
    assert adamoe.routing_stats(model).experts_per_token != gap
    model.save_pretrained(tmp_path)
    again = adamoe.from_pretrained(str(tmp_path))
    assert (adamoe.moe_config_of(again).rule, adamoe.moe_config_of(again).threshold) == ("top_p", 0.6)
    valid = "'gap', 'top_p', 'expert_threshold'"
    with pytest.raises(adamoe.MoEConfigError, match=f"rule must be one of {valid}; got 'top_q'"):
        adamoe.set_routing(model, rule="top_q")
