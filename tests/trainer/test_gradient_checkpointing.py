"""Gradient checkpointing keeps the balance loss's gradient (non-reentrant), or is refused (reentrant); bf16 autocast
keeps the router in float32 and the loss near the float32 one.

The reference is the same model and batch without checkpointing / in float32.
"""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import adamoe
from adamoe.trainer import AdaMoETrainer, AdaMoETrainingArguments


def tiny_llama(dtype=torch.float64):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    moe = adamoe.MoEConfig(num_experts=4, gating="adaptive", threshold=0.2, router_init_std=0.3)
    return adamoe.moeify(LlamaForCausalLM(config), moe).to(dtype).train()


BATCH = {"input_ids": torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(1))}


def router_grads(model):
    loss = model(**BATCH, labels=BATCH["input_ids"]).loss + adamoe.balance_loss(model)
    loss.backward()
    return {name: block.router.weight.grad.clone() for name, block in adamoe.moe_blocks(model)}, loss.detach()


def test_non_reentrant_checkpointing_gives_the_routers_the_same_gradients():
    expected, expected_loss = router_grads(tiny_llama())
    model = tiny_llama()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    got, loss = router_grads(model)
    assert torch.allclose(loss, expected_loss, rtol=0, atol=1e-12)
    for name, grad in expected.items():
        assert grad.abs().sum() > 0  # the balance loss and the task loss both reach the router
        assert torch.allclose(got[name], grad, rtol=1e-9, atol=1e-12), name


def test_reentrant_checkpointing_is_refused_instead_of_losing_the_balance_gradient(tmp_path):
    model = tiny_llama()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model(**BATCH, labels=BATCH["input_ids"])
    with pytest.raises(RuntimeError, match="no gradient.*use_reentrant.*False"):
        adamoe.balance_loss(model)
    args = AdaMoETrainingArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": True},
    )  # fmt: skip
    with pytest.raises(ValueError, match="reentrant gradient checkpointing"):
        AdaMoETrainer(model=tiny_llama(), args=args)


def test_a_bf16_autocast_step_keeps_the_router_in_float32_and_the_loss_near_float32():
    model = tiny_llama(torch.float32)
    expected = model(**BATCH, labels=BATCH["input_ids"]).loss + adamoe.balance_loss(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**BATCH, labels=BATCH["input_ids"]).loss + adamoe.balance_loss(model)
    routing = adamoe.moe_blocks(model)[0][1].last_routing
    assert routing.probs.dtype == torch.float32 and routing.combine_weights.dtype == torch.float32
    assert abs(loss.item() - expected.item()) < 2e-2 * expected.item()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
