"""Checkpoints: save -> load round trips, strict loading, and what plain transformers does with them."""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import arch_by_name
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import adamoe
from adamoe import CheckpointError, MoEConfig


def saved_moe_model(arch, tmp_path, threshold=0.3):
    model = adamoe.moeify(arch.build(), MoEConfig(num_experts=3, expert_init="random", threshold=threshold))
    model.save_pretrained(tmp_path)
    return model


def test_save_then_load_gives_identical_outputs(arch, tmp_path):
    model = saved_moe_model(arch, tmp_path)
    inputs = arch.inputs()
    want = model(**inputs).logits
    stored = json.loads((tmp_path / "config.json").read_text())["adamoe"]
    assert stored["num_experts"] == 3 and stored["threshold"] == 0.3

    loaded = adamoe.from_pretrained(str(tmp_path))
    assert type(loaded) is type(model) and not loaded.training
    assert adamoe.moe_config_of(loaded) == adamoe.moe_config_of(model)
    torch.testing.assert_close(loaded(**inputs).logits, want, rtol=0, atol=0)


def test_dense_checkpoint_plus_moe_config_is_upcycled(tmp_path):
    arch = arch_by_name("bert")
    dense = arch.build()
    dense.save_pretrained(tmp_path)
    inputs = arch.inputs()
    model = adamoe.from_pretrained(str(tmp_path), moe=MoEConfig(num_experts=4))
    assert adamoe.is_moe_model(model)
    torch.testing.assert_close(model(**inputs).logits, dense(**inputs).logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(CheckpointError, match="dense checkpoint"):
        adamoe.from_pretrained(str(tmp_path))


def test_head_class_can_be_chosen(tmp_path):
    arch = arch_by_name("bert")
    saved_moe_model(arch, tmp_path)
    model = adamoe.from_pretrained(str(tmp_path), model_class=AutoModelForSequenceClassification)
    assert type(model).__name__ == "BertForSequenceClassification" and adamoe.is_moe_model(model)


def rewrite_weights(tmp_path, edit):
    path = tmp_path / "model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, path, metadata={"format": "pt"})


def test_missing_expert_weights_fail_loudly(tmp_path):
    saved_moe_model(arch_by_name("gpt2"), tmp_path)
    rewrite_weights(tmp_path, lambda s: s.pop(next(k for k in s if k.endswith("experts.w_out"))))
    with pytest.raises(CheckpointError, match=r"missing \(1\): transformer\.h\.\d\.mlp\.experts\.w_out"):
        adamoe.from_pretrained(str(tmp_path))


def test_extra_expert_weights_fail_loudly(tmp_path):
    saved_moe_model(arch_by_name("gpt2"), tmp_path)
    rewrite_weights(tmp_path, lambda s: s.__setitem__("transformer.h.0.mlp.experts.w_extra", torch.zeros(2)))
    with pytest.raises(CheckpointError, match="unexpected"):
        adamoe.from_pretrained(str(tmp_path))


def test_weights_that_disagree_with_the_config_fail_loudly(tmp_path):
    saved_moe_model(arch_by_name("t5"), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["adamoe"]["num_experts"] = 5  # weights hold 3 experts
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"shape mismatch.*checkpoint \(3, 32, 64\), model \(5, 32, 64\)"):
        adamoe.from_pretrained(str(tmp_path))


def test_a_different_structure_is_refused_and_a_different_routing_is_announced(tmp_path, caplog):
    arch = arch_by_name("bart")
    model = saved_moe_model(arch, tmp_path, threshold=0.0)
    with pytest.raises(CheckpointError, match="num_experts: checkpoint 3, requested 8"):
        adamoe.from_pretrained(str(tmp_path), moe=MoEConfig(num_experts=8))
    requested = MoEConfig(num_experts=3, threshold=1.0)
    with caplog.at_level(logging.WARNING, logger="adamoe.patching.loading"):
        loaded = adamoe.from_pretrained(str(tmp_path), moe=requested)
    assert "threshold: 0.0 -> 1.0" in caplog.text
    loaded(**arch.inputs())
    assert adamoe.routing_stats(loaded).two_expert_fraction == 1.0
    model(**arch.inputs())
    assert adamoe.routing_stats(model).two_expert_fraction == 0.0


def test_plain_transformers_load_comes_back_unpatched_and_is_detected(tmp_path):
    arch = arch_by_name("bert")
    saved_moe_model(arch, tmp_path)
    plain = AutoModelForSequenceClassification.from_pretrained(str(tmp_path))
    # Pinned transformers behaviour: the MoE key survives in the config, the experts do not.
    assert not adamoe.is_moe_model(plain) and "adamoe" in plain.config.to_dict()
    with pytest.raises(CheckpointError, match="adamoe.from_pretrained"):
        adamoe.check_patched_consistently(plain)
    adamoe.check_patched_consistently(adamoe.from_pretrained(str(tmp_path)))


def test_missing_weights_file_is_explained(tmp_path):
    saved_moe_model(arch_by_name("bert"), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="No weights"):
        adamoe.from_pretrained(str(tmp_path))


def test_push_to_hub_uploads_a_checkpoint_that_loads_back_patched(fake_hub):
    # Through a local server that speaks the Hub's file API (`hub_server.py`), reached through HF_ENDPOINT.
    arch = arch_by_name("bart")
    model = adamoe.moeify(arch.build(), MoEConfig(num_experts=3, expert_init="random", threshold=0.3))
    model.push_to_hub("someone/bart-moe")

    uploaded = fake_hub.files("someone/bart-moe")
    assert {"config.json", "model.safetensors", "README.md"} <= set(uploaded)
    assert json.loads(uploaded["config.json"])["adamoe"]["num_experts"] == 3
    loaded = adamoe.from_pretrained("someone/bart-moe")
    assert adamoe.is_moe_model(loaded) and adamoe.moe_config_of(loaded) == adamoe.moe_config_of(model)
    inputs = arch.inputs()
    torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)
    # The weights came from the server (the test's Hub cache starts empty), and nothing unknown was asked of it.
    downloads = [path for method, path in fake_hub.requests if method == "GET" and "/resolve/" in path]
    assert any(p.endswith("/model.safetensors") for p in downloads) and not fake_hub.unknown, fake_hub.requests
    with pytest.raises(OSError, match="someone/no-such-model is not a local folder and is not a valid model"):
        adamoe.from_pretrained("someone/no-such-model")


@pytest.mark.parametrize("entry", ["from_pretrained", "load_model"])
def test_a_push_between_the_config_and_the_weights_downloads_does_not_mix_commits(entry, fake_hub, monkeypatch):
    """The weights come from the commit the config came from: a push landing after the load has read the config
    (revision A) but before it fetches the weights (B has other weights of the same shape) must not pair A's config
    with B's weights. Through `adamoe.from_pretrained`, and through `load_model` (what `adamoe finetune --model`
    uses), which reads the config itself and hands it on."""
    import adamoe.patching.loading as loading
    from adamoe.tasks import get_task

    def load(name):
        if entry == "load_model":
            return loading.load_model(get_task("sst2"), name, moe=None).eval()
        return adamoe.from_pretrained(name)

    arch = arch_by_name("bert")
    first = adamoe.moeify(arch.build(seed=0), MoEConfig(num_experts=3, expert_init="random", threshold=0.3))
    second = adamoe.moeify(arch.build(seed=1), MoEConfig(num_experts=3, expert_init="random", threshold=0.3))
    first.push_to_hub("someone/moving")
    commit_a = fake_hub.repos["someone/moving"].main
    read_state_dict = loading._read_state_dict

    def push_then_read(*args, **kwargs):
        second.push_to_hub("someone/moving")
        return read_state_dict(*args, **kwargs)

    monkeypatch.setattr(loading, "_read_state_dict", push_then_read)
    loaded = load("someone/moving")
    monkeypatch.setattr(loading, "_read_state_dict", read_state_dict)
    assert fake_hub.repos["someone/moving"].main != commit_a  # B did land in between
    inputs = arch.inputs()
    torch.testing.assert_close(loaded(**inputs).logits, first.eval()(**inputs).logits, rtol=0, atol=0)
    # A load started after the push gets B: the two revisions really differ.
    again = load("someone/moving")
    torch.testing.assert_close(again(**inputs).logits, second.eval()(**inputs).logits, rtol=0, atol=0)
    assert not torch.allclose(again(**inputs).logits, loaded(**inputs).logits)
    assert not fake_hub.unknown, fake_hub.unknown


@pytest.mark.parametrize("entry", ["run", "convert"])
def test_the_tokenizer_comes_from_the_commit_the_model_came_from(
    entry, fake_hub, monkeypatch, gpt2_tokenizer, tmp_path
):
    """`finetune` and `evaluate` (`load_model_and_tokenizer`), and `convert` / `export`, load the model, then the
    tokenizer: a push landing in between (B: another length limit) must not hand A's model B's tokenizer."""
    import adamoe.patching.loading as loading
    import adamoe.run.models as models
    from adamoe.tasks import get_task

    module = loading if entry == "run" else models

    def load():
        if entry == "run":
            return loading.load_model_and_tokenizer(get_task("wikitext"), "someone/pair", None)[1]
        out = tmp_path / f"converted-{len(list(tmp_path.iterdir()))}"
        models.convert("someone/pair", str(out), MoEConfig(num_experts=2))
        return AutoTokenizer.from_pretrained(out)

    arch_by_name("llama").build().push_to_hub("someone/pair")
    gpt2_tokenizer.model_max_length = 64
    gpt2_tokenizer.push_to_hub("someone/pair")
    load_tokenizer = module.load_tokenizer

    def push_then_load(*args, **kwargs):
        gpt2_tokenizer.model_max_length = 32
        gpt2_tokenizer.push_to_hub("someone/pair")
        return load_tokenizer(*args, **kwargs)

    monkeypatch.setattr(module, "load_tokenizer", push_then_load)
    tokenizer = load()
    monkeypatch.setattr(module, "load_tokenizer", load_tokenizer)
    assert tokenizer.model_max_length == 64
    # A load started after the push gets B's tokenizer: the two commits really differ.
    assert load().model_max_length == 32
    assert not fake_hub.unknown, fake_hub.unknown


def test_a_checkpoint_saved_before_top_k_loads_as_before(tmp_path):
    arch = arch_by_name("bert")
    model = saved_moe_model(arch, tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    del config["adamoe"]["top_k"]  # what adamoe wrote before k_max existed
    path.write_text(json.dumps(config))
    inputs = arch.inputs()
    loaded = adamoe.from_pretrained(str(tmp_path))
    assert adamoe.moe_config_of(loaded).top_k == 2
    torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)
    assert all(block.last_routing.top_k == 2 for _, block in adamoe.moe_blocks(loaded))


@pytest.mark.parametrize("name", ["t5-gated", "llama"])  # llama's tiny config has biases on both halves
def test_a_checkpoint_with_unfused_gated_experts_loads_as_before(name, tmp_path):
    arch = arch_by_name(name)
    model = saved_moe_model(arch, tmp_path)
    # Rewrite the weights file the way adamoe stored gated experts before the fusion: w_gate and w_in, one half
    # each, (E, hidden, ffn) (biases b_gate and b_in likewise).
    path = tmp_path / "model.safetensors"
    state, unfused = load_file(path), 0
    for key in [k for k in state if k.endswith(("experts.w_in", "experts.b_in"))]:
        gate, up = state.pop(key).chunk(2, dim=-1)
        state[key.replace("_in", "_gate")], state[key] = gate.contiguous(), up.contiguous()
        unfused += 1
    assert unfused >= 4  # two layers (T5: four stacks' FFNs), weights at least
    save_file(state, path, metadata={"format": "pt"})
    inputs = arch.inputs()
    loaded = adamoe.from_pretrained(str(tmp_path))
    torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)
    # The same through a plain load_state_dict (as a resumed Trainer checkpoint is loaded): no expert key left
    # over or missing (the file leaves out only tied embeddings, which tie_weights restores).
    again = adamoe.moeify(arch.build(seed=1), MoEConfig(num_experts=3, expert_init="random", threshold=0.3)).eval()
    result = again.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if "experts" in k]
    again.tie_weights()
    torch.testing.assert_close(again(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_a_top_k_checkpoint_round_trips(tmp_path):
    arch = arch_by_name("t5")
    cfg = MoEConfig(num_experts=4, top_k=4, threshold=0.4, expert_init="random", router_init_std=0.5)
    model = adamoe.moeify(arch.build(), cfg)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["adamoe"]["top_k"] == 4
    inputs = arch.inputs()
    loaded = adamoe.from_pretrained(str(tmp_path))
    assert adamoe.moe_config_of(loaded) == cfg.resolve()  # stored with its "from the model" fields filled
    torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_the_load_report_of_a_new_task_head_is_one_line(tmp_path, caplog):
    import logging

    from transformers import BertConfig, BertForSequenceClassification, BertModel

    from adamoe.patching.loading import load_pretrained_quietly

    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "base")  # fmt: skip
    with caplog.at_level(logging.INFO):
        model = load_pretrained_quietly(BertForSequenceClassification, str(tmp_path / "base"), num_labels=2)
    assert isinstance(model, BertForSequenceClassification)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "classifier.bias, classifier.weight (the task head)" in lines[0], lines
