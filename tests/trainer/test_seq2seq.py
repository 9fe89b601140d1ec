"""`AdaMoESeq2SeqTrainer` on a tiny T5: encoder and decoder MoE layers, curriculum vectors, generate-based eval."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

import adamoe
from adamoe.trainer import AdaMoESeq2SeqTrainer, AdaMoESeq2SeqTrainingArguments


def _tiny_t5() -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=50,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    model = T5ForConditionalGeneration(config)
    return adamoe.moeify(model, adamoe.MoEConfig(num_experts=4, threshold=0.2, router_init_std=1.0))


def _data(n: int) -> list[dict[str, list[int]]]:
    generator = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n):
        length = int(torch.randint(3, 8, (1,), generator=generator))
        ids = torch.randint(2, 50, (length,), generator=generator).tolist()
        out.append({"input_ids": ids + [1], "labels": ids[::-1][:4] + [1]})
    return out


def _collate(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    def pad(rows: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        return torch.tensor([r + [value] * (width - len(r)) for r in rows])

    input_ids = pad([f["input_ids"] for f in features], 0)
    return {
        "input_ids": input_ids,
        "attention_mask": (input_ids != 0).long(),
        "labels": pad([f["labels"] for f in features], -100),
    }


def test_seq2seq_trainer_routes_both_stacks_and_evaluates_without_balance(train_kwargs: dict[str, Any]) -> None:
    model, data = _tiny_t5(), _data(8)
    args = AdaMoESeq2SeqTrainingArguments(
        num_train_epochs=1,
        logging_steps=1,
        curriculum=True,
        predict_with_generate=True,
        generation_max_length=6,
        **train_kwargs,
    )
    trainer = AdaMoESeq2SeqTrainer(
        model=model, args=args, train_dataset=data, eval_dataset=data, data_collator=_collate
    )
    trainer.train()

    log = next(log for log in trainer.state.log_history if "loss" in log)
    layers = [layer.name for layer in adamoe.routing_stats(model).layers]
    assert len(layers) == 4 and any("decoder" in name for name in layers)
    assert all(f"two_expert_fraction/{name}" in log for name in layers)
    assert log["loss"] == pytest.approx(log["task_loss"] + log["balance_loss"], rel=1e-5)
    # One complexity vector per sample, one entry per encoder and decoder MoE layer.
    assert sorted(trainer.training_order.vectors) == list(range(8))
    assert trainer.training_order.vectors[0].shape == (4,)
    # Tokens: encoder (attention mask) plus decoder targets.
    assert trainer.timing.summary()["num_tokens"] == sum(len(f["input_ids"]) + len(f["labels"]) for f in data)

    metrics = trainer.evaluate()
    model.eval()
    with torch.no_grad():
        reference = model(**_collate(data)).loss
    assert metrics["eval_loss"] == pytest.approx(float(reference), abs=1e-6)
