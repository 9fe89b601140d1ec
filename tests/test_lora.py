"""LoRA through PEFT on a patched model (adamoe/patching/lora.py): on attention and on the experts (a rank-r update
per expert, through the grouped dispatch), the routers trained with the adapter, and everything adamoe reads
(balance loss, routing statistics, set_routing) working through the PeftModel. The references: the merged model
(PEFT adds the updates into the weights), and the adapter loaded back onto a freshly loaded base."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import adamoe

peft = pytest.importorskip("peft", reason="LoRA needs peft (pip install 'adamoe[lora]')")

TOKENS = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(0))


def patched(num_experts=4, **moe):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip
    settings = {"num_experts": num_experts, "upcycle_noise": 0.1, "router_init_std": 1.0, **moe}
    return adamoe.moeify(LlamaForCausalLM(config), adamoe.MoEConfig(**settings))


def lora_model(model, **kwargs):
    # Random B as well as A, so the updates are not zero and every comparison below has something to compare.
    config = adamoe.lora_config(model, r=4, init_lora_weights=False, **kwargs)
    return peft.get_peft_model(model, config)


def test_lora_on_attention_and_experts_trains_adapters_and_routers_only():
    model = lora_model(patched())
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or "router.modules_to_save" in name for name in trainable)
    assert any("experts" in name and "lora_A" in name for name in trainable)  # per-expert updates on w_in, w_out
    assert any("q_proj.lora_A" in name for name in trainable)
    assert sum("router.modules_to_save" in name for name in trainable) == 2  # adaptive: the routers train too


def test_the_expert_updates_equal_the_merged_weights():
    model = lora_model(patched()).eval()
    with torch.no_grad():
        unmerged = model(input_ids=TOKENS).logits
        plain = patched().eval()(input_ids=TOKENS).logits
        merged = model.merge_and_unload()(input_ids=TOKENS).logits
    assert not torch.allclose(unmerged, plain, atol=1e-3)  # the adapter changes the output
    assert torch.allclose(unmerged, merged, atol=1e-5), (unmerged - merged).abs().max()


def test_balance_loss_statistics_and_set_routing_work_through_the_peft_model():
    model = lora_model(patched(gating="adaptive", threshold=0.1))
    loss = model(input_ids=TOKENS, labels=TOKENS).loss + adamoe.balance_loss(model)
    loss.backward()
    routers = [p for name, p in model.named_parameters() if "router.modules_to_save" in name]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in routers)
    assert 0 < adamoe.routing_stats(model).two_expert_fraction < 1
    adamoe.set_routing(model, gating="top2")  # reaches the trained router copies inside PEFT's wrappers
    with torch.no_grad():
        model(input_ids=TOKENS)
    assert adamoe.routing_stats(model).two_expert_fraction == 1.0
    assert adamoe.moe_config_of(model).gating == "top2"


def test_an_adapter_loads_back_onto_the_patched_base_and_refuses_another(tmp_path):
    base = patched()
    base.save_pretrained(tmp_path / "base")
    model = lora_model(base).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "router.modules_to_save" in name:
                p.add_(torch.randn_like(p))  # as training would move them
        expected = model(input_ids=TOKENS).logits
    model.save_pretrained(tmp_path / "adapter")
    again = adamoe.load_lora(adamoe.from_pretrained(str(tmp_path / "base")), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        assert torch.equal(again(input_ids=TOKENS).logits, expected)
    with pytest.raises(adamoe.LoraError, match="another MoE structure.*8 experts"):
        adamoe.load_lora(patched(num_experts=8), str(tmp_path / "adapter"))


def test_native_names_resolve_and_bad_targets_are_refused():
    model = patched()
    config = adamoe.lora_config(model, targets=["mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.gate"])
    assert set(config.target_parameters) == {"experts.w_in", "experts.w_out"} and config.modules_to_save == ["router"]
    assert adamoe.lora_config(model, targets=["attention"], train_routers=False).modules_to_save is None
    with pytest.raises(adamoe.LoraError, match="'nope' matches no module"):
        adamoe.lora_config(model, targets=["nope"])
    with pytest.raises(adamoe.LoraError, match="rank r must be an integer >= 1, got 0"):
        adamoe.lora_config(model, r=0)


def test_finetune_with_lora_leaves_the_adapter_and_the_merged_model(smoke_kit, tmp_path):
    """`adamoe finetune --lora-r`: the folder holds the adapter (adapter/) and the merged model, and the merged model
    equals the adapter on the base the run started from (rebuilt here from the same seed)."""
    from transformers import set_seed
    from typer.testing import CliRunner

    from adamoe.cli import app
    from adamoe.patching.loading import load_model
    from adamoe.tasks import get_task

    sst2, out = smoke_kit["sst2"], tmp_path / "run"
    args = ["finetune", "--task", "sst2", "--model", str(sst2.model_dir), "--train-file", str(sst2.train_file)]
    args += ["--validation-file", str(sst2.validation_file), "--max-steps", "3", "--num-experts", "4", "--lr", "1e-2"]
    args += ["--lora-r", "4", "--lora-targets", "attention,experts", "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "config.json").is_file()
    assert json.loads((out / "run_config.json").read_text())["lora"]["targets"] == ["attention", "experts"]

    set_seed(42)  # finetune's seed, so the routers start where the run's did
    base = load_model(get_task("sst2"), str(sst2.model_dir), adamoe.MoEConfig(num_experts=4))
    adapted = adamoe.load_lora(base, str(out / "adapter")).eval()
    merged = adamoe.from_pretrained(str(out)).eval()
    batch = {"input_ids": torch.randint(5, 50, (2, 7), generator=torch.Generator().manual_seed(1))}
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, adapted(**batch).logits, atol=1e-5)
        plain = load_model(get_task("sst2"), str(sst2.model_dir), adamoe.MoEConfig(num_experts=4)).eval()
        assert not torch.allclose(merged(**batch).logits, plain(**batch).logits, atol=1e-4)  # it trained


def test_lora_settings_are_checked_before_the_run(smoke_kit, tmp_path):
    from typer.testing import CliRunner

    from adamoe.cli import app

    sst2, out = smoke_kit["sst2"], tmp_path / "run"
    base = ["finetune", "--task", "sst2", "--model", str(sst2.model_dir), "--train-file", str(sst2.train_file)]
    base += ["--max-steps", "1", "-o", str(out)]
    for extra, says in [
        (["--lora-r", "0"], "lora.r (--lora-r) must be at least 1"),
        (["--lora-r", "4", "--lora-targets", "nope"], "'nope' matches no module"),
    ]:
        result = CliRunner().invoke(app, [*base, *extra])
        assert result.exit_code == 2 and says in " ".join(result.output.split()), result.output
        assert not out.exists()


def _pad_causal(features):
    """Right-pad `input_ids` with 0; padding is masked out of attention and of the labels."""
    width = max(len(f["input_ids"]) for f in features)
    input_ids = torch.zeros(len(features), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, feature in enumerate(features):
        input_ids[row, : len(feature["input_ids"])] = torch.tensor(feature["input_ids"])
        attention_mask[row, : len(feature["input_ids"])] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def test_curriculum_reads_per_sample_routing_through_the_peft_model(tmp_path):
    """`curriculum=True` on a PeftModel: the complexity vectors the trainer files in epoch 1 are each sample's own
    routing, and epoch 2 runs in the curriculum order of those vectors. The reference reads the routing without PEFT:
    one unpadded forward per sample through the merged model (adapters folded into the weights, the trained router
    copies put back), so a wrapper that hid the blocks' routing, their padding mask or the active router copy from
    the trainer would show up as different vectors."""
    from datasets import Dataset

    from adamoe.trainer import AdaMoETrainer, AdaMoETrainingArguments, curriculum_order

    class SpyTrainer(AdaMoETrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                self.seen.append((self.training_order.epoch, inputs["sample_index"].tolist()))
            return super().compute_loss(model, inputs, *args, **kwargs)

    model = lora_model(patched(gating="adaptive", threshold=0.1))
    with torch.no_grad():  # trained router copies that route unlike the originals they shadow, as training leaves them
        for name, p in model.named_parameters():
            if "router.modules_to_save" in name:
                p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(3, 10, (12,), generator=generator).tolist()  # uneven, so batches carry padding
    data = [{"input_ids": torch.randint(1, 40, (n,), generator=generator).tolist()} for n in lengths]
    # lr = 0: the weights of the training forwards are the ones the reference runs with afterwards.
    args = AdaMoETrainingArguments(
        output_dir=str(tmp_path / "out"), learning_rate=0.0, num_train_epochs=2, curriculum=True,
        per_device_train_batch_size=4, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = SpyTrainer(model=model, args=args, train_dataset=Dataset.from_list(data), data_collator=_pad_causal)
    trainer.seen = []
    trainer.train()

    merged = model.merge_and_unload().eval()  # in place: the trainer is done with the model
    assert not any("lora_" in name or "modules_to_save" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        reference = []
        for sample in data:
            merged(**_pad_causal([sample]))
            reference.append(adamoe.routing_stats(merged).per_sample[0])
    reference = torch.stack(reference)  # (12, 2)
    collected = torch.stack([trainer.training_order.vectors[i] for i in range(12)])
    torch.testing.assert_close(collected, reference, rtol=0, atol=1e-6)
    assert len({tuple(v) for v in reference.tolist()}) > 4  # the samples really differ in complexity

    epochs = [[i for e, batch in trainer.seen if e == epoch for i in batch] for epoch in (0, 1)]
    assert epochs[0] == torch.randperm(12, generator=torch.Generator().manual_seed(0)).tolist()
    assert epochs[1] == curriculum_order(reference)
    assert epochs[1] != torch.randperm(12, generator=torch.Generator().manual_seed(1)).tolist()  # not a shuffle
