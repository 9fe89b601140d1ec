"""moeify on native MoE models: their own router and experts kept, only the rule and the dispatch replaced."""

import pytest
import torch
from tiny_models import NATIVE_MOES, arch_by_name
from transformers import (
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    GptOssConfig,
    GptOssForCausalLM,
    Qwen3MoeForCausalLM,
)

import adamoe
from adamoe import MoEConfig, MoEConfigError, UnsupportedArchitectureError
from adamoe.patching.native import NATIVE_MOE_SPECS, register_native_moe_spec

IDS = [a.name for a in NATIVE_MOES]


def build(arch, seed: int = 0) -> torch.nn.Module:
    """A tiny native MoE whose routers are sure enough that the top-k has no near-ties (transformers' 0.02 init,
    or the Qwen routers' zeros, would leave every gate probability within rounding of the others)."""
    model = arch.build(seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                param.copy_(torch.randn(param.shape, generator=g) * 0.5)
    return model


def native_config(arch) -> tuple[int, int]:
    c = arch.config
    return getattr(c, "num_local_experts", None) or c.num_experts, c.num_experts_per_tok


def moe_layer_count(model) -> int:
    return sum(hasattr(layer.mlp, "experts") for layer in model.model.layers)


@pytest.mark.parametrize("arch", NATIVE_MOES, ids=IDS)
@pytest.mark.parametrize("moe", [MoEConfig(threshold=1.0), MoEConfig(gating="topk")], ids=["T=1", "topk"])
def test_patched_model_equals_the_native_model_in_logits_and_loss(arch, moe):
    inputs = arch.inputs()
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    native = build(arch)
    layers = moe_layer_count(native)
    want = native(**inputs, labels=labels)
    model = adamoe.moeify(build(arch), moe)
    got = model(**inputs, labels=labels)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-5)
    experts, k = native_config(arch)
    assert len(adamoe.moe_blocks(model)) == layers
    assert adamoe.routing_stats(model).experts_per_token == k
    stored = adamoe.moe_config_of(model)
    assert (stored.num_experts, stored.top_k) == (experts, k)


@pytest.mark.parametrize("arch", NATIVE_MOES, ids=IDS)
def test_generate_with_kv_cache_equals_the_native_model(arch):
    inputs = arch.inputs(padded=False)
    kwargs = dict(max_new_tokens=6, do_sample=False, use_cache=True, output_scores=True, return_dict_in_generate=True)
    want = build(arch).generate(**inputs, **kwargs, pad_token_id=0)
    got = adamoe.moeify(build(arch), MoEConfig(threshold=1.0)).generate(**inputs, **kwargs, pad_token_id=0)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.scores, want.scores, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", NATIVE_MOES, ids=IDS)
def test_the_pretrained_router_and_experts_are_kept_and_moved_not_copied(arch):
    model = build(arch)
    count = model.num_parameters()
    natives = {
        name: layer.mlp for name, layer in model.named_modules() if hasattr(getattr(layer, "mlp", None), "experts")
    }
    gates = {name: mlp.gate.weight for name, mlp in natives.items()}
    fused = {
        name: (mlp.experts.gate_up_proj.detach().clone(), mlp.experts.down_proj.detach().clone())
        for name, mlp in natives.items()
    }
    shared = {name: getattr(mlp, "shared_expert", None) for name, mlp in natives.items()}
    assert adamoe.upcycled_parameter_count(model) == count
    adamoe.moeify(model, MoEConfig())
    assert model.num_parameters() == count  # nothing added, nothing left behind
    assert not any("gate_up_proj" in name or ".mlp.gate." in name for name, _ in model.named_parameters())
    assert not any(p.is_meta for p in model.parameters())
    for name, block in adamoe.moe_blocks(model):
        layer = name.rsplit(".mlp", 1)[0]
        assert block.router.weight is gates[layer]  # the model's own router Parameter
        gate_up, down = fused[layer]
        assert torch.equal(block.experts.w_in, gate_up.transpose(1, 2))  # gate half first, as natively
        assert torch.equal(block.experts.w_out, down.transpose(1, 2))
        if shared[layer] is not None:
            assert block.shared_expert.mlp is shared[layer]  # Qwen2-MoE's shared expert, as it was


def test_each_model_keeps_its_renormalisation_and_its_shared_expert():
    combines = {}
    for arch in NATIVE_MOES:
        model = adamoe.moeify(build(arch), MoEConfig())
        combines[arch.name] = adamoe.moe_config_of(model).combine
        assert {b.shared_expert is not None for _, b in adamoe.moe_blocks(model)} == {arch.name == "qwen2_moe"}
    assert combines == {"mixtral": "normalized", "qwen2_moe": "gate", "qwen3_moe": "normalized", "olmoe": "gate"}
    # Qwen2-MoE's layer 0 is a dense MLP (mlp_only_layers): it stays as it is, not upcycled.
    model = adamoe.moeify(build(arch_by_name("qwen2_moe")), MoEConfig())
    assert [name for name, _ in adamoe.moe_blocks(model)] == ["model.layers.1.mlp"]


@pytest.mark.parametrize("arch", NATIVE_MOES, ids=IDS)
def test_lowering_the_threshold_lowers_the_experts_per_token_down_to_one(arch):
    inputs = arch.inputs()
    _, k = native_config(arch)
    means, first_layer = [], []
    for threshold in (1.0, 0.6, 0.4, 0.2, 0.1, 0.0):
        model = adamoe.moeify(build(arch), MoEConfig(threshold=threshold))
        model(**inputs)
        means.append(adamoe.routing_stats(model).experts_per_token)
        first_layer.append(adamoe.moe_blocks(model)[0][1].last_routing.num_selected)
    assert means[0] == k and means[-1] == 1.0
    assert all(a >= b for a, b in zip(means[:-1], means[1:], strict=True)), means
    assert any(1.0 < m < k for m in means)  # in between, some tokens really take fewer experts than k
    # The first MoE layer sees the same hidden states whatever T: there every token's count only goes down.
    assert all(bool((a >= b).all()) for a, b in zip(first_layer[:-1], first_layer[1:], strict=True))


@pytest.mark.parametrize("arch", NATIVE_MOES, ids=IDS)
def test_save_then_from_pretrained_gives_identical_outputs(arch, tmp_path):
    inputs = arch.inputs()
    model = adamoe.moeify(build(arch), MoEConfig(threshold=0.2))
    want = model(**inputs).logits
    model.save_pretrained(tmp_path)
    loaded = adamoe.from_pretrained(str(tmp_path))
    assert torch.equal(loaded(**inputs).logits, want)
    assert adamoe.moe_config_of(loaded) == adamoe.moe_config_of(model)
    # A routing change on load keeps the checkpoint's experts, top-k and combine where it leaves them unset.
    again = adamoe.from_pretrained(str(tmp_path), moe=MoEConfig(threshold=1.0))
    assert adamoe.moe_config_of(again).num_experts == native_config(arch)[0]
    torch.testing.assert_close(again(**inputs).logits, build(arch)(**inputs).logits, rtol=1e-5, atol=1e-5)


def test_a_native_checkpoint_patched_on_load(tmp_path):
    arch = arch_by_name("mixtral")
    native = build(arch)
    native.save_pretrained(tmp_path)
    inputs = arch.inputs()
    model = adamoe.from_pretrained(str(tmp_path), moe=MoEConfig(threshold=1.0))
    torch.testing.assert_close(model(**inputs).logits, native(**inputs).logits, rtol=1e-5, atol=1e-5)


def test_training_uses_the_balance_loss_and_refuses_router_logits():
    arch = arch_by_name("qwen3_moe")
    inputs = arch.inputs()
    model = build(arch)
    model.config.output_router_logits = True  # the model's own aux loss: replaced, so switched off
    model = adamoe.moeify(model, MoEConfig(threshold=0.3)).train()
    assert model.config.output_router_logits is False
    out = model(**inputs, labels=inputs["input_ids"])
    assert out.aux_loss is None  # no router aux loss of the model's own
    (out.loss + adamoe.balance_loss(model)).backward()
    block = adamoe.moe_blocks(model)[0][1]
    assert block.router.weight.grad is not None and block.router.weight.grad.abs().sum() > 0
    assert block.experts.w_in.grad is not None
    with pytest.raises(ValueError, match="output_router_logits.*adamoe.balance_loss"):
        model(**inputs, output_router_logits=True)


@pytest.mark.parametrize(
    "model_class, config",
    [
        (
            DeepseekV3ForCausalLM,
            DeepseekV3Config(
                vocab_size=100,
                hidden_size=32,
                intermediate_size=64,
                moe_intermediate_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                n_routed_experts=4,
                num_experts_per_tok=2,
                n_group=1,
                topk_group=1,
                first_k_dense_replace=0,
                kv_lora_rank=16,
                q_lora_rank=16,
                qk_rope_head_dim=8,
                qk_nope_head_dim=8,
                v_head_dim=8,
            ),
        ),
        (
            GptOssForCausalLM,
            GptOssConfig(
                vocab_size=100,
                hidden_size=32,
                intermediate_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=16,
                num_local_experts=4,
                num_experts_per_tok=2,
            ),
        ),
    ],
    ids=["deepseek_v3", "gpt_oss"],
)
def test_an_moe_whose_routing_adamoe_cannot_reproduce_is_refused_untouched(model_class, config):
    model = model_class(config)
    snapshot = repr(model)
    with pytest.raises(UnsupportedArchitectureError, match="cannot reproduce its routing") as err:
        adamoe.moeify(model, MoEConfig())
    assert all(name in str(err.value) for name in ("mixtral", "olmoe", "qwen2_moe", "qwen3_moe"))
    assert "register_native_moe_spec" in str(err.value)
    assert repr(model) == snapshot and not hasattr(model.config, "adamoe")


@pytest.mark.parametrize(
    "moe, error, message",
    [
        (MoEConfig(num_experts=4), MoEConfigError, "num_experts=4.* contradicts .* 8 pretrained experts.*unset"),
        (MoEConfig(top_k=9), MoEConfigError, "top_k=9 exceeds the 8 experts.*top_k <= 8"),
        (MoEConfig(layers=[1]), MoEConfigError, "layers / every_n_layers .* do not apply"),
        (MoEConfig(expert_init="random"), MoEConfigError, "pretrained experts adamoe keeps"),
    ],
)
def test_bad_configs_for_a_native_model_fail_before_anything_changes(moe, error, message):
    model = build(arch_by_name("mixtral"))
    snapshot = repr(model)
    with pytest.raises(error, match=message):
        adamoe.moeify(model, moe)
    with pytest.raises(error, match=message):
        adamoe.upcycled_parameter_count(model, moe)
    assert repr(model) == snapshot and not adamoe.is_moe_model(model) and not hasattr(model.config, "adamoe")


def test_router_jitter_is_refused_and_top_k_below_one_fails_on_creation():
    arch = arch_by_name("mixtral")
    model = build(arch)
    model.config.router_jitter_noise = 0.1
    with pytest.raises(UnsupportedArchitectureError, match="router_jitter_noise"):
        adamoe.moeify(model)
    assert not adamoe.is_moe_model(model)
    with pytest.raises(MoEConfigError, match="top_k must be an integer >= 1"):
        MoEConfig(top_k=0)


def test_patching_a_patched_native_model_is_refused():
    model = adamoe.moeify(build(arch_by_name("olmoe")))
    with pytest.raises(ValueError, match="only once.*adamoe.from_pretrained"):
        adamoe.moeify(model, MoEConfig())


def test_a_larger_k_max_than_the_models_own_and_a_fixed_top2():
    arch = arch_by_name("mixtral")  # 8 experts, its own k = 2
    inputs = arch.inputs()
    model = adamoe.moeify(build(arch), MoEConfig(top_k=4, threshold=1.0))
    model(**inputs)
    assert adamoe.routing_stats(model).experts_per_token == 4
    model = adamoe.moeify(build(arch_by_name("qwen3_moe")), MoEConfig(gating="top2"))
    model(**inputs)
    stats = adamoe.routing_stats(model)
    assert stats.experts_per_token == 2 and all(layer.top_k == 4 for layer in stats.layers)


def test_a_new_native_moe_is_one_registry_entry():
    class MyMoeForCausalLM(Qwen3MoeForCausalLM):
        pass

    arch = arch_by_name("qwen3_moe")
    model = MyMoeForCausalLM(arch.config.__class__(**arch.config.to_dict()))
    model.config.model_type = "my_moe"
    with pytest.raises(UnsupportedArchitectureError, match="'my_moe'"):
        adamoe.moeify(model)
    try:
        register_native_moe_spec("my_moe", NATIVE_MOE_SPECS["qwen3_moe"])
        with pytest.raises(ValueError, match="exists"):
            register_native_moe_spec("my_moe", NATIVE_MOE_SPECS["qwen3_moe"])
        adamoe.moeify(model)
        assert len(adamoe.moe_blocks(model)) == 2
    finally:
        NATIVE_MOE_SPECS.pop("my_moe", None)
