"""`AdaMoETrainer` on tiny BERTs: balance loss in training only, routing logs, complexity vectors, curriculum,
resume, the dense baseline and the refusal of a silently unpatched checkpoint."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from trainer_toys import VOCAB, SpyTrainer, complexity_vectors, pad_collate, spy_trainer, tiny_bert, toy_dataset
from transformers import BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

import adamoe
from adamoe.trainer import (
    CURRICULUM_STATE_NAME,
    TIMING_STATE_NAME,
    AdaMoETrainer,
    AdaMoETrainingArguments,
    curriculum_order,
)


def _indices_of_epoch(trainer: SpyTrainer, epoch: int) -> list[int]:
    return [i for e, batch in trainer.seen if e == epoch for i in batch]


def _training_logs(trainer: AdaMoETrainer) -> list[dict[str, float]]:
    return [log for log in trainer.state.log_history if "loss" in log]


def test_balance_loss_in_training_only(train_kwargs: dict[str, Any]) -> None:
    model = tiny_bert()
    data, dev = toy_dataset(16), toy_dataset(8, seed=2)
    args = AdaMoETrainingArguments(max_steps=4, logging_steps=2, **train_kwargs)
    trainer = AdaMoETrainer(model=model, args=args, train_dataset=data, eval_dataset=dev, data_collator=pad_collate)
    cpu_before = time.process_time()
    trainer.train()
    cpu_spent = time.process_time() - cpu_before

    logs = _training_logs(trainer)
    assert len(logs) == 2
    # Each training log carries the process CPU seconds of training so far, growing, within what train() spent.
    assert 0 < logs[0]["train_cpu_s"] < logs[1]["train_cpu_s"] <= cpu_spent
    for log in logs:
        assert log["balance_loss"] > 0
        assert log["loss"] == pytest.approx(log["task_loss"] + log["balance_loss"], rel=1e-5)
        per_layer = [log[f"two_expert_fraction/bert.encoder.layer.{i}"] for i in (0, 1)]
        assert 0 < log["two_expert_fraction"] < 1 and all(0 <= f <= 1 for f in per_layer)
        assert log["flops_vs_top2"] == pytest.approx(0.5 * (1 + log["two_expert_fraction"]))
        assert all(log[f"expert_load_max_over_mean/bert.encoder.layer.{i}"] >= 1 for i in (0, 1))

    # In training, compute_loss is the task loss plus the balance loss of the same forward.
    batch = pad_collate(data[:4])
    model.train()
    with torch.no_grad():
        expected = model(**batch).loss + adamoe.balance_loss(model)
        assert trainer.compute_loss(model, dict(batch)) == pytest.approx(float(expected), rel=1e-6)

    # In evaluation, eval_loss is the plain task loss, recomputed independently in eval mode.
    metrics = trainer.evaluate()
    model.eval()
    with torch.no_grad():
        reference = model(**pad_collate(dev)).loss
        balance = adamoe.balance_loss(model)
    assert balance > 1e-4
    assert metrics["eval_loss"] == pytest.approx(float(reference), abs=1e-6)
    assert abs(metrics["eval_loss"] - float(reference + balance)) > balance / 2


def test_complexity_vectors_equal_a_separate_forward_and_drive_epoch_two(train_kwargs: dict[str, Any]) -> None:
    model = tiny_bert()
    data = toy_dataset(16)
    # lr = 0: the weights of the training forwards are the ones we check against afterwards.
    args = AdaMoETrainingArguments(learning_rate=0.0, num_train_epochs=2, curriculum=True, **train_kwargs)
    trainer = spy_trainer(model=model, args=args, train_dataset=data)
    trainer.train()

    reference = complexity_vectors(model, data)  # (16, 2)
    collected = torch.stack([trainer.training_order.vectors[i] for i in range(16)])
    torch.testing.assert_close(collected, reference, rtol=0, atol=1e-6)
    assert len({tuple(v) for v in reference.tolist()}) > 4  # the samples really differ in complexity

    epoch0, epoch1 = _indices_of_epoch(trainer, 0), _indices_of_epoch(trainer, 1)
    assert sorted(epoch0) == sorted(epoch1) == list(range(16))
    assert epoch0 == torch.randperm(16, generator=torch.Generator().manual_seed(0)).tolist()
    assert epoch1 == curriculum_order(reference)
    assert epoch1 != torch.randperm(16, generator=torch.Generator().manual_seed(1)).tolist()  # not epoch 1's shuffle


def test_gradient_accumulation_keeps_every_vector_and_the_loss_split(train_kwargs: dict[str, Any]) -> None:
    train_kwargs["per_device_train_batch_size"] = 2
    args = AdaMoETrainingArguments(
        gradient_accumulation_steps=3, num_train_epochs=1, logging_steps=1, curriculum=True, **train_kwargs
    )
    # A datasets.Dataset with a column the model does not take: remove_unused_columns must drop "text" but keep
    # "sample_index" all the way to compute_loss.
    dataset = Dataset.from_list([{**sample, "text": "unused"} for sample in toy_dataset(12)])

    def strict_collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        assert all(set(feature) == {"input_ids", "labels"} for feature in features)
        return pad_collate(features)

    trainer = SpyTrainer(model=tiny_bert(), args=args, train_dataset=dataset, data_collator=strict_collate)
    trainer.seen = []
    trainer.train()
    assert trainer.state.global_step == 2
    assert sorted(trainer.training_order.vectors) == list(range(12))
    for log in _training_logs(trainer):
        assert log["loss"] == pytest.approx(log["task_loss"] + log["balance_loss"], rel=1e-5)


def test_gradient_accumulation_equals_one_big_batch(train_kwargs: dict[str, Any]) -> None:
    # BERT's classification head returns a per-batch mean although its forward takes **kwargs; the trainer must
    # still divide by the micro-batches (transformers#47688), so 2 x 2 accumulated == one batch of 4 under SGD.
    data = toy_dataset(4)
    results = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        model = tiny_bert(moe=False)
        args = AdaMoETrainingArguments(
            max_steps=1,
            learning_rate=0.5,
            optim="sgd",
            max_grad_norm=0.0,
            logging_steps=1,
            gradient_accumulation_steps=accumulation,
            **{**train_kwargs, "per_device_train_batch_size": batch_size},
        )
        trainer = AdaMoETrainer(model=model, args=args, train_dataset=data, data_collator=pad_collate)
        assert trainer.model_accepts_loss_kwargs is False
        trainer.train()
        results.append((_training_logs(trainer)[0]["task_loss"], torch.cat([p.flatten() for p in model.parameters()])))
    (loss_one, weights_one), (loss_accumulated, weights_accumulated) = results
    assert loss_one == pytest.approx(loss_accumulated, rel=1e-5)
    assert loss_one == pytest.approx(math.log(2), abs=0.05)  # a 2-class mean at init, not 2 x that
    torch.testing.assert_close(weights_accumulated, weights_one, rtol=0, atol=1e-6)
    assert not torch.equal(weights_one, torch.cat([p.flatten() for p in tiny_bert(moe=False).parameters()]))


def test_only_heads_that_normalise_by_num_items_keep_the_loss_kwargs(train_kwargs: dict[str, Any]) -> None:
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=VOCAB, n_positions=16))
    args = AdaMoETrainingArguments(max_steps=1, **train_kwargs)
    assert AdaMoETrainer(model=gpt2, args=args).model_accepts_loss_kwargs is True  # uses self.loss_function
    assert AdaMoETrainer(model=tiny_bert(), args=args).model_accepts_loss_kwargs is False


def test_resume_replays_the_interrupted_curriculum_epoch(train_kwargs: dict[str, Any]) -> None:
    data = toy_dataset(12)
    save = {"save_strategy": "steps", "save_steps": 4}
    args = AdaMoETrainingArguments(num_train_epochs=2, curriculum=True, **{**train_kwargs, **save})
    full = spy_trainer(model=tiny_bert(), args=args, train_dataset=data)
    full.train()
    checkpoint = os.path.join(args.output_dir, "checkpoint-4")  # after the first of epoch 1's three batches
    assert os.path.isfile(os.path.join(checkpoint, CURRICULUM_STATE_NAME))
    saved = torch.load(os.path.join(checkpoint, CURRICULUM_STATE_NAME), weights_only=True)
    assert saved["order_epoch"] == 1 and saved["order"].tolist() == _indices_of_epoch(full, 1)
    saved_elapsed = torch.load(os.path.join(checkpoint, TIMING_STATE_NAME), weights_only=True)["elapsed_s"]

    resumed = spy_trainer(model=tiny_bert(seed=5), args=args, train_dataset=data)
    resumed.train(resume_from_checkpoint=checkpoint)
    # The resumed run skips the batch it had trained and goes on in the checkpointed order.
    assert _indices_of_epoch(resumed, 1) == _indices_of_epoch(full, 1)[4:]
    assert _indices_of_epoch(full, 1) != torch.randperm(12, generator=torch.Generator().manual_seed(1)).tolist()
    assert resumed.timing.summary()["train_time_s"] > saved_elapsed


def test_dense_baseline_trains_through_the_same_trainer(train_kwargs: dict[str, Any]) -> None:
    data = toy_dataset(8)
    args = AdaMoETrainingArguments(max_steps=2, logging_steps=1, curriculum=True, **train_kwargs)
    trainer = AdaMoETrainer(model=tiny_bert(moe=False), args=args, train_dataset=data, data_collator=pad_collate)
    trainer.train()
    assert trainer.training_order is None  # nothing to order by
    for log in _training_logs(trainer):
        assert log["task_loss"] == pytest.approx(log["loss"], rel=1e-6)
        assert "balance_loss" not in log and "two_expert_fraction" not in log
    summary = trainer.timing.summary()
    assert summary["num_tokens"] == sum(len(sample["input_ids"]) for sample in data)  # 2 steps x 4 = all 8
    assert summary["tokens_per_second"] == pytest.approx(summary["num_tokens"] / summary["train_time_s"])
    assert summary["two_expert_fraction"] is None and summary["flops_vs_top2"] is None


def test_summary_routing_figures_cover_the_whole_run(train_kwargs: dict[str, Any]) -> None:
    data = toy_dataset(8)
    args = AdaMoETrainingArguments(learning_rate=0.0, max_steps=2, **train_kwargs)
    model = tiny_bert()
    trainer = AdaMoETrainer(model=model, args=args, train_dataset=data, data_collator=pad_collate)
    trainer.train()
    model.eval()
    with torch.no_grad():  # the same 8 samples at the same weights, in one padded batch
        model(**pad_collate(data))
    stats = adamoe.routing_stats(model)
    summary = trainer.timing.summary()
    assert summary["two_expert_fraction"] == pytest.approx(stats.two_expert_fraction)
    assert summary["flops_vs_top2"] == pytest.approx(stats.flops_vs_top2)
    assert summary["two_expert_fraction_per_layer"] == pytest.approx(
        {layer.name: layer.two_expert_fraction for layer in stats.layers}
    )


def test_refuses_a_patched_checkpoint_loaded_with_plain_transformers(
    tmp_path: Path, train_kwargs: dict[str, Any]
) -> None:
    tiny_bert().save_pretrained(tmp_path / "patched")
    args = AdaMoETrainingArguments(max_steps=1, **train_kwargs)
    unpatched = BertForSequenceClassification.from_pretrained(tmp_path / "patched")
    with pytest.raises(adamoe.CheckpointError, match="adamoe.from_pretrained"):
        AdaMoETrainer(model=unpatched, args=args, train_dataset=toy_dataset(4), data_collator=pad_collate)
    loaded = adamoe.from_pretrained(str(tmp_path / "patched"))
    assert adamoe.is_moe_model(AdaMoETrainer(model=loaded, args=args, data_collator=pad_collate).model)
