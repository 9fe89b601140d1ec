"""Routing statistics and the balance loss against straightforward recomputations."""

import pytest
import torch
from tiny_models import arch_by_name

import adamoe
from adamoe import MoEConfig
from adamoe.moe.balance import load_balancing_loss


def patched(name, **moe):
    arch = arch_by_name(name)
    cfg = dict(num_experts=4, threshold=0.1, expert_init="random", router_init_std=1.0)
    return arch, adamoe.moeify(arch.build(), MoEConfig(**{**cfg, **moe}))


def test_balance_loss_equals_a_float64_loop():
    torch.manual_seed(0)
    probs = torch.randn(50, 6).softmax(-1)
    first = probs.argmax(-1)
    mask = torch.rand(50) > 0.3
    rows = [i for i in range(50) if mask[i]]
    ref = 0.0
    for e in range(6):
        f_e = sum(1 for i in rows if first[i] == e) / len(rows)
        p_e = sum(float(probs[i, e]) for i in rows) / len(rows)
        ref += f_e * p_e
    assert load_balancing_loss(probs, first, mask).item() == pytest.approx(6 * ref, rel=1e-6)


def test_balance_loss_is_one_when_uniform_and_larger_when_collapsed():
    uniform = torch.full((8, 4), 0.25)
    assert load_balancing_loss(uniform, torch.arange(8) % 4).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[0.97, 0.01, 0.01, 0.01]]).repeat(8, 1)
    assert load_balancing_loss(collapsed, torch.zeros(8, dtype=torch.long)).item() == pytest.approx(4 * 0.97)


# FSMT is left out: its dense decoder output itself changes when encoder padding is appended.
@pytest.mark.parametrize("name", ["bert", "gpt2", "bart", "t5"])
def test_padding_never_changes_the_balance_loss_or_the_statistics(name):
    arch, model = patched(name)
    inputs = arch.inputs(batch=2, seq_len=6, padded=False)
    model(**inputs)
    loss, stats = adamoe.balance_loss(model), adamoe.routing_stats(model)
    padded = {k: torch.cat([v, torch.full((2, 3), 5, dtype=v.dtype)], dim=1) for k, v in inputs.items()}
    padded["attention_mask"][:, 6:] = 0
    if arch.seq2seq:
        padded["decoder_attention_mask"] = torch.ones_like(padded["decoder_input_ids"])
        padded["decoder_attention_mask"][:, 4:] = 0
    model(**padded)
    torch.testing.assert_close(adamoe.balance_loss(model), loss, rtol=1e-5, atol=1e-6)
    padded_stats = adamoe.routing_stats(model)
    assert [s.first_choice_counts for s in padded_stats.layers] == [s.first_choice_counts for s in stats.layers]
    torch.testing.assert_close(padded_stats.per_sample, stats.per_sample)


@pytest.mark.parametrize("name,router_std", [("bert", 1.0), ("t5", 0.02), ("fsmt", 1.0)])
def test_routing_stats_match_a_recount_from_the_decisions(name, router_std):
    arch, model = patched(name, router_init_std=router_std)
    inputs = arch.inputs(batch=3, seq_len=7, padded=True)
    model(**inputs)
    stats = adamoe.routing_stats(model)
    mask = inputs["attention_mask"].bool()
    total_tokens = total_two = 0
    for i, (layer, (_, block)) in enumerate(zip(stats.layers, adamoe.moe_blocks(model), strict=True)):
        r = block.last_routing
        batch, seq_len = r.batch_shape
        # Recount sample by sample, position by position, from the raw decisions.
        grid_two = (
            r.second_active.view(seq_len, batch).t() if block.seq_first else r.second_active.view(batch, seq_len)
        )
        grid_first = (
            r.expert_index[:, 0].view(seq_len, batch).t()
            if block.seq_first
            else r.expert_index[:, 0].view(batch, seq_len)
        )
        layer_mask = mask if block.stack == "encoder" else torch.ones(batch, seq_len, dtype=torch.bool)
        counts, two, per_sample = [0] * 4, 0, []
        for b in range(batch):
            real = [t for t in range(seq_len) if layer_mask[b, t]]
            for t in real:
                counts[int(grid_first[b, t])] += 1
                two += int(grid_two[b, t])
            per_sample.append(sum(int(grid_two[b, t]) for t in real) / len(real))
        assert layer.first_choice_counts == counts
        assert layer.num_tokens == int(layer_mask.sum()) and layer.two_expert_fraction == pytest.approx(
            two / layer.num_tokens
        )
        assert layer.flops_vs_top2 == pytest.approx((layer.num_tokens + two) / (2 * layer.num_tokens))
        assert sum(layer.second_choice_counts) == two
        torch.testing.assert_close(stats.per_sample[:, i], torch.tensor(per_sample))
        total_tokens, total_two = total_tokens + layer.num_tokens, total_two + two
    assert stats.two_expert_fraction == pytest.approx(total_two / total_tokens)
    assert 0 < stats.two_expert_fraction < 1


@pytest.mark.parametrize("name", ["bert", "gpt2", "fsmt", "t5"])
def test_per_sample_vectors_do_not_depend_on_the_batch(name):
    arch, model = patched(name)
    inputs = arch.inputs(batch=3, seq_len=6, padded=False)
    model(**inputs)
    together = adamoe.per_sample_two_expert_fractions(model)
    alone = []
    for b in range(3):
        model(**{k: v[b : b + 1] for k, v in inputs.items()})
        alone.append(adamoe.per_sample_two_expert_fractions(model))
    torch.testing.assert_close(together, torch.cat(alone))


def test_balance_loss_scales_with_the_coefficient_and_stays_out_of_the_model_loss():
    arch, model = patched("gpt2", aux_loss_coef=0.5)
    inputs = arch.inputs()
    out = model(**inputs, labels=inputs["input_ids"])
    blocks = adamoe.moe_blocks(model)
    by_hand = sum(
        load_balancing_loss(b.last_routing.probs, b.last_routing.expert_index[:, 0], b.last_routing.token_mask)
        for _, b in blocks
    )
    torch.testing.assert_close(adamoe.balance_loss(model), 0.5 * by_hand)
    dense_loss = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, 100), inputs["input_ids"][:, 1:].reshape(-1)
    )
    torch.testing.assert_close(out.loss, dense_loss)


def test_stats_before_any_forward_are_refused():
    _, model = patched("bert")
    with pytest.raises(ValueError, match="forward pass first"):
        adamoe.routing_stats(model)


def test_decoder_padding_comes_from_the_labels_when_the_collator_built_decoder_inputs():
    arch, model = patched("bart")
    inputs = arch.inputs(batch=2, seq_len=6, padded=False)
    labels = inputs.pop("decoder_input_ids").clone()
    labels[0, 2:] = -100  # sample 0 has 2 real target tokens, sample 1 has 4
    decoder_input_ids = torch.cat([torch.full((2, 1), 2), labels[:, :-1].clamp_min(1)], dim=1)
    model(**inputs, labels=labels, decoder_input_ids=decoder_input_ids)
    decoder_layers = [s for s in adamoe.routing_stats(model).layers if s.stack == "decoder"]
    assert [s.num_tokens for s in decoder_layers] == [6, 6]


def by_sample(routing, values, seq_first):
    """`(num_tokens, k)` -> `(batch, seq_len, k)`."""
    batch, seq_len = routing.batch_shape
    return values.view(seq_len, batch, -1).transpose(0, 1) if seq_first else values.view(batch, seq_len, -1)


@pytest.mark.parametrize("name,top_k", [("bert", 4), ("t5", 8), ("fsmt", 3)])
def test_k_max_statistics_match_a_recount_from_the_decisions(name, top_k):
    arch, model = patched(name, num_experts=8, top_k=top_k, threshold=0.5, router_init_std=0.3)
    inputs = arch.inputs(batch=3, seq_len=7, padded=True)
    model(**inputs)
    stats = adamoe.routing_stats(model)
    mask = inputs["attention_mask"].bool()
    tokens = pairs = multi = 0
    for i, (layer, (_, block)) in enumerate(zip(stats.layers, adamoe.moe_blocks(model), strict=True)):
        r = block.last_routing
        batch, seq_len = r.batch_shape
        index, active = (by_sample(r, t, block.seq_first) for t in (r.expert_index, r.active))  # (batch, seq, k)
        layer_mask = mask if block.stack == "encoder" else torch.ones(batch, seq_len, dtype=torch.bool)
        histogram, load, per_sample = [0] * top_k, [0] * 8, []
        for b in range(batch):
            real = [t for t in range(seq_len) if layer_mask[b, t]]
            used = [int(active[b, t].sum()) for t in real]
            for t, k in zip(real, used, strict=True):
                histogram[k - 1] += 1
                for slot in range(k):
                    load[int(index[b, t, slot])] += 1
            per_sample.append(sum((k - 1) / (top_k - 1) for k in used) / len(real))
        n = int(layer_mask.sum())
        assert layer.top_k == top_k and layer.num_tokens == n
        assert layer.k_histogram == histogram and layer.expert_counts == load
        assert layer.two_expert_fraction == pytest.approx(1 - histogram[0] / n)
        assert layer.experts_per_token == pytest.approx(sum(load) / n)
        assert layer.flops_vs_top_k == pytest.approx(sum(load) / (top_k * n))
        assert layer.flops_vs_top2 == pytest.approx(sum(load) / (2 * n))
        torch.testing.assert_close(stats.per_sample[:, i], torch.tensor(per_sample))
        tokens, pairs, multi = tokens + n, pairs + sum(load), multi + n - histogram[0]
    assert stats.experts_per_token == pytest.approx(pairs / tokens)
    assert stats.flops_vs_top_k == pytest.approx(pairs / (top_k * tokens))
    assert stats.two_expert_fraction == pytest.approx(multi / tokens)
    assert 1 < stats.experts_per_token < top_k  # the case exercises several k


def test_with_k_max_two_the_new_figures_agree_with_the_two_expert_ones():
    arch, model = patched("bert")
    model(**arch.inputs(batch=3, seq_len=7, padded=True))
    stats = adamoe.routing_stats(model)
    for layer in stats.layers:
        assert layer.k_histogram == [
            layer.num_tokens - sum(layer.second_choice_counts),
            sum(layer.second_choice_counts),
        ]
        assert layer.flops_vs_top_k == pytest.approx(layer.flops_vs_top2)
        assert layer.experts_per_token == pytest.approx(1 + layer.two_expert_fraction)
    assert stats.flops_vs_top_k == pytest.approx(stats.flops_vs_top2)
    torch.testing.assert_close(adamoe.per_sample_two_expert_fractions(model), stats.per_sample)


@pytest.mark.parametrize("top_k", [4, 8])
def test_a_k_max_block_equals_the_float64_reference(top_k):
    # The dispatch's gradients are checked against the reference in tests/test_dispatch.py; here the block's
    # routing, sorting and combine put together.
    arch, model = patched("bert", num_experts=8, top_k=top_k, threshold=0.6, router_init_std=0.3)
    block = adamoe.moe_blocks(model)[0][1]
    x = torch.randn(2, 9, arch.config.hidden_size)
    out = block(x).reshape(-1, x.shape[-1])  # (num_tokens, hidden)
    r = block.last_routing
    assert 1 < float(r.num_selected.float().mean()) < top_k
    ref = block.experts.reference_forward(x.reshape(-1, x.shape[-1]), r.expert_index, r.combine_weights, r.active)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
