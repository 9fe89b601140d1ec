"""Token-budget batching (`max_tokens`): the packing, the lengths it reads, and training with it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from datasets import Dataset
from trainer_toys import complexity_vectors, pad_collate, spy_trainer, tiny_bert, toy_dataset

from adamoe.trainer import AdaMoETrainer, AdaMoETrainingArguments, curriculum_order
from adamoe.trainer.batching import TokenBudgetBatchSampler, sample_lengths, token_budget_batches


@pytest.mark.parametrize("max_tokens", [9, 16, 40])
def test_packing_is_a_partition_within_budget_and_greedy(max_tokens: int) -> None:
    lengths = np.random.default_rng(0).integers(1, 10, size=57)
    batches = token_budget_batches(lengths, max_tokens, seed=3)
    assert sorted(i for batch in batches for i in batch) == list(range(57))
    for batch in batches:
        assert max(lengths[batch]) * len(batch) <= max_tokens
    # Greedy over ascending lengths: each batch is full, i.e. the next batch's first sample would not fit.
    for batch, following in zip(batches, batches[1:], strict=False):
        assert max(lengths[batch]) <= lengths[following[0]]
        assert lengths[following[0]] * (len(batch) + 1) > max_tokens


def test_equal_lengths_are_packed_in_a_seeded_random_order() -> None:
    lengths = [4] * 12
    assert token_budget_batches(lengths, 8, seed=1) == token_budget_batches(lengths, 8, seed=1)
    assert token_budget_batches(lengths, 8, seed=1) != token_budget_batches(lengths, 8, seed=2)


def test_a_sample_over_the_budget_is_an_error_that_says_what_to_change() -> None:
    with pytest.raises(ValueError, match="longer than max_tokens=5 .*longest has 7 tokens.*max_source_length"):
        token_budget_batches([3, 7, 2], 5)


def test_lengths_are_the_longer_of_source_and_target_token_lists() -> None:
    rows = {
        "input_ids": [[1] * n for n in (5, 2, 7, 3)],
        "labels": [[1] * n for n in (1, 6, 2, 3)],
        "attention_mask": [[1] * n for n in (5, 2, 7, 3)],
    }
    selected = Dataset.from_dict(rows).select([3, 1, 0])  # through an indices mapping
    assert sample_lengths(selected).tolist() == [3, 6, 5]
    classification = [{"input_ids": [1] * n, "labels": n % 2} for n in (4, 2)]  # int labels are not tokens
    assert sample_lengths(classification).tolist() == [4, 2]
    with pytest.raises(ValueError, match="none of the token columns"):
        sample_lengths(Dataset.from_dict({"text": ["a", "b"]}))


def test_batch_curriculum_orders_batches_by_their_mean_vector() -> None:
    sampler = TokenBudgetBatchSampler([2, 2, 3, 3, 5, 5], max_tokens=6, curriculum=True, seed=0)
    vectors = torch.tensor([[0.5, 0.5], [0.9, 0.0], [0.4, 0.4], [0.2, 0.0], [0.05, 0.05], [0.2, 0.0]])
    for batch in sampler.batches:
        sampler.record(batch, vectors[batch])
    means = torch.stack([vectors[batch].mean(dim=0) for batch in sampler.batches])
    torch.testing.assert_close(torch.stack([sampler.sampler.vectors[b] for b in range(len(means))]), means)
    sampler.set_epoch(1)
    assert list(sampler) == [sampler.batches[b] for b in curriculum_order(means)]
    sampler.set_epoch(0)
    assert sorted(map(sorted, sampler)) == sorted(map(sorted, sampler.batches))  # epoch 0: the same batches


def test_resuming_with_another_budget_is_refused() -> None:
    state = TokenBudgetBatchSampler([2, 3, 4, 5], max_tokens=8).state_dict()
    with pytest.raises(ValueError, match="Resume with the same data, seed and max_tokens"):
        TokenBudgetBatchSampler([2, 3, 4, 5], max_tokens=10).load_state_dict(state)


def test_training_by_tokens_follows_the_batch_curriculum(train_kwargs: dict[str, Any]) -> None:
    model, data, max_tokens = tiny_bert(), toy_dataset(24), 20
    # lr = 0: the weights of the training forwards are the ones checked against afterwards.
    args = AdaMoETrainingArguments(
        learning_rate=0.0, num_train_epochs=2, curriculum=True, max_tokens=max_tokens, **train_kwargs
    )
    trainer = spy_trainer(model=model, args=args, train_dataset=data)
    trainer.train()

    lengths = [len(sample["input_ids"]) for sample in data]
    batches = token_budget_batches(lengths, max_tokens, seed=0)
    assert trainer.state.global_step == 2 * len(batches)  # the same number of batches every epoch
    for epoch in (0, 1):
        seen = [batch for e, batch in trainer.seen if e == epoch]
        assert sorted(map(sorted, seen)) == sorted(map(sorted, batches))
        assert all(max(lengths[i] for i in batch) * len(batch) <= max_tokens for batch in seen)

    reference = complexity_vectors(model, data)  # (24, 2)
    batch_means = torch.stack([reference[batch].mean(dim=0) for batch in batches])
    epoch1 = [batch for e, batch in trainer.seen if e == 1]
    assert [sorted(b) for b in epoch1] == [sorted(batches[b]) for b in curriculum_order(batch_means)]


def test_dense_training_by_tokens_reshuffles_the_batches_each_epoch(train_kwargs: dict[str, Any]) -> None:
    seen: list[list[int]] = []

    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seen.append(sorted(f["input_ids"][0] * 1000 + len(f["input_ids"]) for f in features))
        return pad_collate(features)

    data = toy_dataset(24)
    args = AdaMoETrainingArguments(num_train_epochs=3, max_tokens=30, **train_kwargs)
    trainer = AdaMoETrainer(model=tiny_bert(moe=False), args=args, train_dataset=data, data_collator=collate)
    trainer.train()
    batches = token_budget_batches([len(s["input_ids"]) for s in data], 30, seed=0)
    assert trainer.state.global_step == 3 * len(batches)
    epochs = [seen[e * len(batches) : (e + 1) * len(batches)] for e in range(3)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(epochs[2])  # the same fixed batches
    assert epochs[0] != epochs[1] != epochs[2]  # in a new order each epoch


def test_resume_mid_epoch_replays_the_token_batches_in_the_checkpointed_order(train_kwargs: dict[str, Any]) -> None:
    data, max_tokens = toy_dataset(24), 20
    save = {"save_strategy": "steps", "save_steps": 1}
    args = AdaMoETrainingArguments(
        num_train_epochs=2, curriculum=True, max_tokens=max_tokens, **{**train_kwargs, **save}
    )
    full = spy_trainer(model=tiny_bert(), args=args, train_dataset=data)
    full.train()
    per_epoch = len([batch for epoch, batch in full.seen if epoch == 0])
    interrupted_at = per_epoch + 2  # two batches into the curriculum epoch
    checkpoint = f"{args.output_dir}/checkpoint-{interrupted_at}"

    resumed = spy_trainer(model=tiny_bert(seed=5), args=args, train_dataset=data)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert resumed.seen == full.seen[interrupted_at:]  # the same batches, in the same order, from there on
    assert resumed.state.global_step == full.state.global_step == 2 * per_epoch
