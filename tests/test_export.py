"""`adamoe export` / `adamoe.export_native`: native MoE checkpoints that plain transformers loads, computing what
adamoe computes at fixed top-k (float32, 1e-5), and the models that cannot be exported, refused before writing.
"""

import json

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from typer.testing import CliRunner

import adamoe
from adamoe.cli import app

SIZE = {"vocab_size": 48, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2}
HEADS = {"num_attention_heads": 4, "num_key_value_heads": 2}
TOKENS = torch.randint(0, 48, (2, 9), generator=torch.Generator().manual_seed(3))


def upcycled_llama(**moe):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SIZE, **HEADS, tie_word_embeddings=True))
    # Distinct experts and a confident router, so that which experts a token takes changes the output.
    config = {"num_experts": 4, "upcycle_noise": 0.2, "router_init_std": 1.0, "threshold": 0.1, **moe}
    return adamoe.moeify(model, adamoe.MoEConfig(**config)).eval()


def assert_native_equals_fixed_top_k(model, folder):
    native = AutoModelForCausalLM.from_pretrained(folder).eval()  # plain transformers, no adamoe involved
    adamoe.set_routing(model, gating="topk")
    with torch.no_grad():
        expected, got = model(input_ids=TOKENS).logits, native(input_ids=TOKENS).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()
    adamoe.set_routing(model, gating="adaptive")
    with torch.no_grad():
        adaptive = model(input_ids=TOKENS).logits
    assert not torch.allclose(adaptive, expected, atol=1e-5)  # the served model runs fixed top-k, not adaptive
    return native


def test_an_upcycled_llama_becomes_a_mixtral_checkpoint(tmp_path):
    model = upcycled_llama()
    adamoe.export_native(model, tmp_path / "native")
    config = json.loads((tmp_path / "native" / "config.json").read_text())
    assert (config["model_type"], config["num_local_experts"], config["num_experts_per_tok"]) == ("mixtral", 4, 2)
    assert "adamoe" not in config
    assert isinstance(assert_native_equals_fixed_top_k(model, tmp_path / "native"), MixtralForCausalLM)


def test_a_steered_router_exports_without_its_state(tmp_path):
    model = upcycled_llama(target_experts=1.5)
    adamoe.export_native(model, tmp_path / "native")
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "native" / "model.safetensors").keys()
    assert not any("router" in k for k in keys) and any(k.endswith(".gate.weight") for k in keys)
    assert_native_equals_fixed_top_k(model, tmp_path / "native")


def test_an_upcycled_qwen3_becomes_a_qwen3_moe_checkpoint(tmp_path):
    torch.manual_seed(0)
    config = Qwen3Config(**SIZE, **HEADS, head_dim=8)  # head_dim is not hidden / heads: it must travel
    moe = adamoe.MoEConfig(num_experts=4, upcycle_noise=0.2, router_init_std=1.0, threshold=0.1)
    model = adamoe.moeify(Qwen3ForCausalLM(config), moe).eval()
    adamoe.export_native(model, tmp_path / "native")
    native = assert_native_equals_fixed_top_k(model, tmp_path / "native")
    assert type(native).__name__ == "Qwen3MoeForCausalLM" and native.config.norm_topk_prob


def test_a_fine_tuned_native_mixtral_goes_back_to_its_own_format(tmp_path):
    torch.manual_seed(0)
    config = MixtralConfig(**SIZE, **HEADS, num_local_experts=4, num_experts_per_tok=2)
    model = adamoe.moeify(MixtralForCausalLM(config), adamoe.MoEConfig(threshold=0.1)).eval()
    with torch.no_grad():  # as fine-tuning would: every expert and router weight moves
        for _, block in adamoe.moe_blocks(model):
            for p in (block.router.weight, block.experts.w_in, block.experts.w_out):
                p.add_(0.3 * torch.randn_like(p))
    adamoe.export_native(model, tmp_path / "native")
    assert_native_equals_fixed_top_k(model, tmp_path / "native")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: upcycled_llama(every_n_layers=2), "1 of 2 FFNs are MoE blocks.*every FFN"),
        (lambda: upcycled_llama(combine="gate"), "combine='gate'.*renormalises"),
        (
            lambda: adamoe.moeify(Qwen2ForCausalLM(Qwen2Config(**SIZE, **HEADS)), adamoe.MoEConfig(num_experts=2)),
            "qwen2 model has no native MoE export: .*shared expert",
        ),
        (
            lambda: adamoe.moeify(BertForMaskedLM(BertConfig(**SIZE, num_attention_heads=4)), adamoe.MoEConfig()),
            "bert model has no native MoE format",
        ),
        (lambda: LlamaForCausalLM(LlamaConfig(**SIZE, **HEADS)), "no MoE blocks"),
    ],
    ids=["dense-layers", "gate-combine", "qwen2", "bert", "dense-model"],
)
def test_a_model_without_a_native_equivalent_is_refused(tmp_path, build, message):
    with pytest.raises(adamoe.ExportError, match=message):
        adamoe.export_native(build(), tmp_path / "native")
    assert not (tmp_path / "native").exists()


def test_the_cli_exports_a_checkpoint_and_refuses_before_writing(tmp_path):
    upcycled_llama().save_pretrained(tmp_path / "moe")
    result = CliRunner().invoke(app, ["export", "--model", str(tmp_path / "moe"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "MixtralForCausalLM" in result.output
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "mixtral"
    upcycled_llama(every_n_layers=2).save_pretrained(tmp_path / "partial")
    result = CliRunner().invoke(app, ["export", "--model", str(tmp_path / "partial"), "-o", str(tmp_path / "no")])
    assert result.exit_code == 2 and "every FFN" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "no").exists()
