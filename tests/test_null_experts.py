"""Null experts (`MoEConfig.num_null_experts`, take-until-null): router outputs for experts that compute nothing,
against a per-token reference written here from the definition, through the real block, save and load."""

import pytest
import torch
from tiny_models import tiny_llama
from transformers import LlamaConfig, LlamaForCausalLM

import adamoe
from adamoe.moe.balance import load_balancing_loss
from adamoe.moe.dispatch import reference_mixture
from adamoe.moe.router import select_top_k

NUM_EXPERTS, NUM_NULL = 6, 3


def probs(num_tokens=64, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(num_tokens, NUM_EXPERTS + NUM_NULL, generator=g, dtype=torch.float64)).softmax(-1)


def reference(p, gating, k_max, threshold=0.0):
    """Per token: its most likely real expert, then the others (real or null) in decreasing probability, each while
    the gating takes the slot and the expert is real."""
    out = []
    for row in p.tolist():
        first = max(range(NUM_EXPERTS), key=lambda e: row[e])
        others = sorted((e for e in range(len(row)) if e != first), key=lambda e: -row[e])[: k_max - 1]
        kept = [first]
        for slot, e in enumerate(others, start=1):
            if gating == "top2":
                takes = slot < 2
            elif gating == "topk":
                takes = True
            else:  # the gap rule, normalised, against the first (real) expert's probability
                takes = (row[first] - row[e]) / (row[first] + row[e]) <= threshold
            if not takes or e >= NUM_EXPERTS:
                break
            kept.append(e)
        out.append(kept)
    return out


@pytest.mark.parametrize(("gating", "threshold"), [("topk", 0.0), ("top2", 0.0), ("adaptive", 0.3), ("adaptive", 1.0)])
@pytest.mark.parametrize("k_max", [2, 4])
def test_a_slot_won_by_a_null_expert_ends_the_tokens_list(gating, threshold, k_max):
    p = probs()
    index, active = select_top_k(p, gating=gating, threshold=threshold, top_k=k_max, num_null=NUM_NULL)
    got = [index[t][active[t]].tolist() for t in range(p.shape[0])]
    expected = reference(p, gating, k_max, threshold)
    assert got == expected
    # The test sees tokens whose first choice overall was a null expert, and tokens a null cut short.
    assert any(max(range(len(row)), key=row.__getitem__) >= NUM_EXPERTS for row in p.tolist())
    if gating == "topk":
        assert 1 < sum(map(len, got)) / len(got) < k_max


def test_the_block_computes_only_the_real_experts_of_each_tokens_list():
    moe = adamoe.MoEConfig(
        num_experts=NUM_EXPERTS, num_null_experts=NUM_NULL, top_k=4, gating="topk", expert_init="random",
        router_init_std=1.0,
    )  # fmt: skip
    _, block = adamoe.moe_blocks(tiny_llama(moe))[0]
    assert block.router.weight.shape == (NUM_EXPERTS + NUM_NULL, 16)
    hidden = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(1))
    pairs = []
    block.experts.register_forward_pre_hook(lambda module, args, kwargs: pairs.append(kwargs["layout"].num_pairs),
                                            with_kwargs=True)  # fmt: skip
    out = block(hidden)
    routing = block.last_routing
    p = routing.probs.double()
    kept = reference(p, "topk", 4)
    assert [routing.expert_index[t][routing.active[t]].tolist() for t in range(21)] == kept
    assert pairs == [sum(map(len, kept))] < [21 * 4]  # the cost follows the real experts taken, not the slots
    # float64 reference: each kept expert's output weighted by its probability over the kept ones.
    index = torch.tensor([k + [k[0]] * (4 - len(k)) for k in kept])
    active = torch.tensor([[i < len(k) for i in range(4)] for k in kept])
    weights = p.gather(-1, index) * active
    weights = weights / weights.sum(-1, keepdim=True)
    expected = reference_mixture(
        hidden.reshape(-1, 16).double(), index, weights, active, block.experts.double().expert_forward
    )
    torch.testing.assert_close(out.reshape(-1, 16).double(), expected, rtol=1e-5, atol=1e-6)


def test_upcycled_experts_with_null_experts_still_give_the_dense_model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip
    dense = LlamaForCausalLM(config).eval()
    tokens = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = dense(input_ids=tokens).logits
    moe = adamoe.MoEConfig(num_experts=4, num_null_experts=2, top_k=3, gating="topk", router_init_std=1.0)
    model = adamoe.moeify(dense, moe).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=tokens).logits, expected, rtol=1e-5, atol=1e-5)
    assert 1 < adamoe.routing_stats(model).experts_per_token < 3


def test_the_balance_loss_spreads_only_the_real_experts(tmp_path):
    moe = adamoe.MoEConfig(num_experts=NUM_EXPERTS, num_null_experts=NUM_NULL, top_k=2, router_init_std=1.0)
    model = tiny_llama(moe)
    tokens = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(0))
    model(input_ids=tokens)
    expected = 0.0
    for _, block in adamoe.moe_blocks(model):
        routing = block.last_routing
        real = routing.probs[:, :NUM_EXPERTS].double()
        expected += 0.01 * load_balancing_loss(real / real.sum(-1, keepdim=True), routing.expert_index[:, 0])
    assert adamoe.balance_loss(model).item() == pytest.approx(expected.item(), rel=1e-6)
    # Saved and loaded with the router's null rows; a config with another count is another structure.
    model.save_pretrained(tmp_path)
    again = adamoe.from_pretrained(str(tmp_path))
    assert adamoe.moe_config_of(again).num_null_experts == NUM_NULL
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=tokens).logits, model(input_ids=tokens).logits, rtol=0, atol=0)
    with pytest.raises(adamoe.MoEConfigError, match="num_null_experts"):
        adamoe.set_routing(again, num_null_experts=1)


def test_null_experts_are_refused_where_they_cannot_work(tmp_path):
    with pytest.raises(adamoe.MoEConfigError, match="threshold per real expert"):
        adamoe.MoEConfig(num_null_experts=2, rule="expert_threshold", target_experts=1.5)
    with pytest.raises(adamoe.MoEConfigError, match="num_null_experts must be an integer"):
        adamoe.MoEConfig(num_null_experts=-1)
    model = tiny_llama(adamoe.MoEConfig(num_experts=4, num_null_experts=2, top_k=2))
    with pytest.raises(adamoe.ExportError, match="null experts"):
        adamoe.export_native(model, tmp_path / "out")
