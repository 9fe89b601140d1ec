"""moeify over the architecture table: equivalence with the dense model, structure, and refusals."""

import copy

import pytest
import torch
from tiny_models import GENERATORS, arch_by_name

import adamoe
from adamoe import MoEBlock, MoEConfig, UnsupportedArchitectureError


def count_ffn_layers(arch) -> int:
    c = arch.config
    if arch.seq2seq:
        return 2 * getattr(c, "num_layers", getattr(c, "encoder_layers", 2))
    return getattr(c, "num_hidden_layers", getattr(c, "n_layer", 2))


@pytest.mark.parametrize("gating", ["adaptive", "top1", "top2"])
def test_upcycled_model_equals_the_dense_model(arch, gating):
    dense = arch.build()
    inputs = arch.inputs()
    want = dense(**inputs).logits
    model = adamoe.moeify(arch.build(), MoEConfig(num_experts=4, gating=gating, threshold=0.2))
    got = model(**inputs).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(adamoe.moe_blocks(model)) == count_ffn_layers(arch)
    stats = adamoe.routing_stats(model)
    expected_fraction = {"top1": 0.0, "top2": 1.0}.get(gating)
    if expected_fraction is not None:
        assert stats.two_expert_fraction == expected_fraction


@pytest.mark.parametrize("arch", GENERATORS, ids=[a.name for a in GENERATORS])
def test_generate_with_kv_cache_equals_the_dense_model(arch):
    inputs = arch.inputs(padded=False)
    inputs.pop("decoder_input_ids", None)
    kwargs = dict(max_new_tokens=6, do_sample=False, use_cache=True, output_scores=True, return_dict_in_generate=True)
    if arch.causal:
        kwargs["pad_token_id"] = 0
    want = arch.build().generate(**inputs, **kwargs)
    model = adamoe.moeify(arch.build(), MoEConfig(num_experts=4, threshold=0.2))
    got = model.generate(**inputs, **kwargs)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.scores, want.scores, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "modernbert", "phi3"])
def test_gated_ffns_with_biases_and_fused_weights_split_into_the_right_halves(name):
    # transformers initialises biases to zero, which would hide a bias put on the wrong half.
    arch = arch_by_name(name)
    dense = arch.build()
    with torch.no_grad():
        for param_name, param in dense.named_parameters():
            if "mlp" in param_name:
                param.normal_(std=0.3)
    inputs = arch.inputs()
    want = dense(**inputs).logits
    model = adamoe.moeify(dense, MoEConfig(num_experts=3, threshold=0.5))
    torch.testing.assert_close(model(**inputs).logits, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "phi3", "mt5"])
def test_upcycled_gated_models_equal_the_dense_model_with_up_to_four_experts(name):
    arch = arch_by_name(name)
    inputs = arch.inputs()
    want = arch.build()(**inputs).logits
    model = adamoe.moeify(arch.build(), MoEConfig(num_experts=8, top_k=4, threshold=0.9, router_init_std=0.02))
    torch.testing.assert_close(model(**inputs).logits, want, rtol=1e-5, atol=1e-5)
    assert adamoe.routing_stats(model).two_expert_fraction > 0  # some tokens really did mix several copies


def test_blocks_know_their_stack_where_the_names_do_not_say():
    for name, stacks in (("modernbert", {"encoder"}), ("distilbert", {"encoder"}), ("llama", {"decoder"})):
        model = adamoe.moeify(arch_by_name(name).build(), MoEConfig(num_experts=2))
        assert {block.stack for _, block in adamoe.moe_blocks(model)} == stacks, name
    model = adamoe.moeify(arch_by_name("mbart").build(), MoEConfig(num_experts=2))
    assert [block.stack for _, block in adamoe.moe_blocks(model)] == ["encoder"] * 2 + ["decoder"] * 2


def test_upcycled_parameter_count_is_the_count_after_moeify(arch):
    for config in (MoEConfig(num_experts=4), MoEConfig(num_experts=3, layers=[1])):
        model = arch.build()
        snapshot = repr(model)
        count = adamoe.upcycled_parameter_count(model, config)
        assert repr(model) == snapshot and not adamoe.is_moe_model(model)
        assert count == sum(p.numel() for p in adamoe.moeify(model, config).parameters())
    with pytest.raises(ValueError, match="only once"):
        adamoe.upcycled_parameter_count(model, config)


def test_upcycled_parameter_count_of_a_model_on_the_meta_device():
    # How convert sizes a large model before loading its weights: nothing is allocated.
    arch = arch_by_name("llama")
    with torch.device("meta"):
        meta = arch.model_class(copy.deepcopy(arch.config))  # the table's config is shared
    config = MoEConfig(num_experts=8, every_n_layers=2)
    assert adamoe.upcycled_parameter_count(meta, config) == adamoe.upcycled_parameter_count(arch.build(), config)


def test_only_ffns_change(arch):
    dense = arch.build()
    before = {n: p.clone() for n, p in dense.named_parameters()}
    model = adamoe.moeify(dense, MoEConfig(num_experts=3))
    after = dict(model.named_parameters())
    kept = [n for n in before if n in after]
    assert kept and all(torch.equal(before[n], after[n]) for n in kept)
    removed = [n for n in before if n not in after]
    ffn_words = (
        *("intermediate.dense", "output.dense", "mlp.c_", "DenseReluDense", "fc1", "fc2", "ffn.lin1", "ffn.lin2"),
        *("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "mlp.gate_up_proj", "mlp.Wi", "mlp.Wo"),
    )
    assert removed and all(any(w in n for w in ffn_words) for n in removed)
    assert not any("attention.output.dense" in n for n in removed)  # BERT's look-alike suffix stays


def test_single_expert_top1_block_is_the_dense_ffn():
    arch = arch_by_name("bert")
    inputs = arch.inputs()
    want = arch.build()(**inputs).logits
    model = adamoe.moeify(arch.build(), MoEConfig(num_experts=1, gating="top1", combine="gate"))
    torch.testing.assert_close(model(**inputs).logits, want, rtol=1e-5, atol=1e-5)


def test_every_n_layers_and_layer_lists():
    arch = arch_by_name("bart")
    model = adamoe.moeify(arch.build(), MoEConfig(num_experts=2, every_n_layers=2))
    assert [n for n, _ in adamoe.moe_blocks(model)] == ["model.encoder.layers.1.fc1", "model.decoder.layers.1.fc1"]
    model = adamoe.moeify(arch.build(), MoEConfig(num_experts=2, layers=[0]))
    assert [b.layer_name for _, b in adamoe.moe_blocks(model)] == ["model.encoder.layers.0", "model.decoder.layers.0"]
    assert [b.stack for _, b in adamoe.moe_blocks(model)] == ["encoder", "decoder"]


def test_unsupported_architecture_names_the_supported_ones_and_the_way_to_add_one():
    # ALBERT shares one FFN across all layers, which no spec describes.
    from transformers import AlbertConfig, AlbertModel

    model = AlbertModel(
        AlbertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    )
    with pytest.raises(UnsupportedArchitectureError, match="'albert'") as err:
        adamoe.moeify(model)
    assert all(t in str(err.value) for t in ("bart", "distilbert", "fsmt", "gpt2", "llama", "roberta", "t5"))
    assert "register_ffn_spec" in str(err.value)


def test_a_failure_leaves_the_model_untouched():
    arch = arch_by_name("bert")
    model = arch.build()
    del model.bert.encoder.layer[1].intermediate.dense  # the last layer no longer fits the spec
    snapshot = repr(model)
    with pytest.raises(UnsupportedArchitectureError, match="Nothing was changed"):
        adamoe.moeify(model, MoEConfig(num_experts=2))
    assert repr(model) == snapshot and not adamoe.is_moe_model(model)
    assert not hasattr(model.config, "adamoe")
    with pytest.raises(ValueError, match="no layer"):
        adamoe.moeify(arch.build(), MoEConfig(num_experts=2, layers=[0, 7]))


def test_patching_twice_is_refused():
    model = adamoe.moeify(arch_by_name("gpt2").build(), MoEConfig(num_experts=2))
    with pytest.raises(ValueError, match="only once"):
        adamoe.moeify(model, MoEConfig(num_experts=2))


def test_random_expert_init_differs_from_the_dense_ffn():
    arch = arch_by_name("gpt2")
    inputs = arch.inputs()
    want = arch.build()(**inputs).logits
    model = adamoe.moeify(arch.build(), MoEConfig(num_experts=4, expert_init="random", combine="gate"))
    assert not torch.allclose(model(**inputs).logits, want, atol=1e-3)
    block = adamoe.moe_blocks(model)[0][1]
    assert isinstance(block, MoEBlock) and not torch.equal(block.experts.w_in[0], block.experts.w_in[1])


def test_gradient_checkpointing_gives_the_same_gradients():
    arch = arch_by_name("gpt2")
    inputs = arch.inputs()
    grads = []
    for checkpointing in (False, True):
        model = adamoe.moeify(arch.build(), MoEConfig(num_experts=4, threshold=0.3, expert_init="random"))
        model.train()
        model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.0
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        if checkpointing:
            # transformers 5.x renamed the method; keep the old name for the oldest version this project admits.
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        calls = []
        for _, block in adamoe.moe_blocks(model):  # counted in forward itself: hooks do not run in a recompute
            block.forward = lambda x, forward=block.forward, calls=calls: calls.append(1) or forward(x)
        out = model(**inputs, labels=inputs["input_ids"])
        (out.loss + adamoe.balance_loss(model)).backward()
        # Checkpointing really ran: every block's forward was recomputed in the backward.
        assert len(calls) == len(adamoe.moe_blocks(model)) * (2 if checkpointing else 1)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any("router" in n for n in grads[1])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6)


def test_training_under_bf16_autocast():
    arch = arch_by_name("t5-gated")
    model = adamoe.moeify(arch.build(), MoEConfig(num_experts=4, threshold=0.3))
    inputs = arch.inputs()
    fp32 = model(**inputs).logits
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**inputs)
        loss = out.logits.float().logsumexp(-1).mean() + adamoe.balance_loss(model)
    loss.backward()
    block = adamoe.moe_blocks(model)[0][1]
    assert block.last_routing.probs.dtype == torch.float32
    assert block.router.weight.grad is not None and torch.isfinite(block.router.weight.grad).all()
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(**inputs).logits
    assert (bf16.float() - fp32).abs().mean() < 0.05 * fp32.abs().mean() + 1e-3


def test_moe_config_is_frozen_and_set_routing_changes_blocks_and_config_together(tmp_path):
    import dataclasses

    arch = arch_by_name("bert")
    inputs = arch.inputs()
    config = MoEConfig(num_experts=4, gating="adaptive", threshold=0.05, router_init_std=1.0, expert_init="random")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.gating = "top2"
    model = adamoe.moeify(arch.build(), config)
    # Reference: the same weights patched from the start with fixed top-2 routing.
    reference = adamoe.moeify(arch.build(), dataclasses.replace(config, gating="top2"))
    reference.load_state_dict(model.state_dict())

    new = adamoe.set_routing(model, gating="top2")
    assert new.gating == "top2" and adamoe.moe_config_of(model) == new
    assert all(b.config.gating == b.router.config.gating == "top2" for _, b in adamoe.moe_blocks(model))
    torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits)
    assert adamoe.routing_stats(model).two_expert_fraction == 1.0

    before = adamoe.moe_config_of(model)
    with pytest.raises(adamoe.MoEConfigError, match="threshold must be in"):
        adamoe.set_routing(model, threshold=2.0)
    with pytest.raises(adamoe.MoEConfigError, match="cannot change on a patched model"):
        adamoe.set_routing(model, num_experts=8)
    assert adamoe.moe_config_of(model) == before  # nothing changed by a refused call

    model.save_pretrained(tmp_path / "moe")
    saved = (tmp_path / "moe" / "config.json").read_text()
    assert f'"adamoe_version": "{adamoe.__version__}"' in saved
    assert adamoe.moe_config_of(adamoe.from_pretrained(str(tmp_path / "moe"))) == new
