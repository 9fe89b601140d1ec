"""Batches by tokens (fairseq's `--max-tokens`), the way the paper trains FSMT and BART (4096 tokens a batch).

transformers' Trainer batches by a fixed number of samples; with `max_tokens` set, the adamoe trainer
batches by a token budget instead:

- `token_budget_batches` fixes the batches once, as fairseq's `batch_by_size` does: the samples are sorted by
  length (ties in a seeded random order) and packed greedily while `longest sample x batch size` (the padded
  size) stays within the budget. Similar lengths share a batch, so little of the budget goes to padding.
- `TokenBudgetBatchSampler` yields those batches in a new order every epoch. The order comes from a
  `CurriculumSampler` over *batches*: a seeded random order (epoch 0, or every epoch without the curriculum),
  then with the curriculum the batches by descending cosine similarity of their mean complexity vector to
  the simplest batch's. Ordering whole batches keeps the number of batches, and so the Trainer's step count,
  the same in every epoch; a per-sample order would regroup the samples every epoch.

Because the batches are fixed by the lengths, the seed and the budget, a resumed run rebuilds the same ones,
and the curriculum state (per-batch vectors, epoch order) carries over through the trainer's checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Sampler

from .curriculum import CurriculumSampler

# The columns whose lengths make a sample's token count: fairseq counts the longer of source and target.
TOKEN_COLUMNS = ("input_ids", "labels", "decoder_input_ids")


def sample_lengths(dataset: Any) -> np.ndarray:
    """Tokens of each sample: the longest of its token-list columns (`TOKEN_COLUMNS`), before padding.

    Reads a `datasets.Dataset` column-wise through Arrow (no Python loop over rows); any other map-style
    dataset item by item.
    """
    if isinstance(dataset, datasets.Dataset):
        columns = [c for c in TOKEN_COLUMNS if c in dataset.column_names]
        table = dataset.select_columns(columns).with_format("arrow")[:] if columns else None
        per_column = [
            pc.list_value_length(table[c]).to_numpy(zero_copy_only=False)
            for c in columns
            if pa.types.is_list(table.schema.field(c).type) or pa.types.is_large_list(table.schema.field(c).type)
        ]
    else:
        items = [dataset[i] for i in range(len(dataset))]
        per_column = [
            np.array([len(item[c]) for item in items])
            for c in TOKEN_COLUMNS
            if items and c in items[0] and hasattr(items[0][c], "__len__")
        ]
    if not per_column:
        raise ValueError(
            f"max_tokens batches by token count, but the training set has none of the token columns {TOKEN_COLUMNS}."
        )
    return np.max(np.stack(per_column), axis=0)


def token_budget_batches(lengths: Sequence[int] | np.ndarray, max_tokens: int, seed: int = 0) -> list[list[int]]:
    """Pack sample indices into batches whose padded size (`longest x count`) is at most `max_tokens`.

    Args:
        lengths: tokens of each sample (for seq2seq the longer of source and target).
        max_tokens: the budget per batch.
        seed: seeds the order among samples of equal length.

    Returns:
        `list[list[int]]`: the batches, shortest samples first.

    Raises:
        ValueError: a sample alone exceeds the budget.

    Example:
        ```python
        >>> token_budget_batches([3, 1, 2, 3], max_tokens=6)
        [[1, 2], [0, 3]]
        ```
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens}.")
    too_long = int((lengths > max_tokens).sum())
    if too_long:
        raise ValueError(
            f"{too_long} training sample(s) are longer than max_tokens={max_tokens} (the longest has "
            f"{int(lengths.max())} tokens): raise max_tokens, or lower max_source_length / max_target_length / "
            "max_seq_length so every sample fits a batch."
        )
    tiebreak = np.random.default_rng(seed).permutation(len(lengths))
    order = np.lexsort((tiebreak, lengths))  # by length, ties in random order
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order.tolist():
        # Ascending lengths: the sample being added is the batch's longest.
        if current and int(lengths[index]) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Batch sampler over fixed token-budget batches, reordered every epoch (see the module docstring).

    It offers the trainer the same `record` / `sync` / `state_dict` interface as `CurriculumSampler`, whose
    instance over batches is its `sampler` attribute (accelerate reaches `sampler.set_epoch` through it).

    Args:
        lengths: tokens of each training sample.
        max_tokens: padded tokens per batch.
        curriculum: order the batches by complexity after the first epoch.
        seed: seeds the packing and the random orders; must be equal on every rank.

    Example:
        ```python
        >>> sampler = TokenBudgetBatchSampler([3, 1, 2, 3], max_tokens=6, curriculum=True)
        >>> sampler.batches
        [[1, 2], [0, 3]]
        >>> sampler.record([0, 3], torch.tensor([[0.0, 0.2], [0.0, 0.4]]))  # mean (0.0, 0.3): batch 1
        >>> sampler.record([1, 2], torch.tensor([[0.9, 0.9], [0.7, 0.9]]))  # mean (0.8, 0.9): batch 0
        >>> sampler.set_epoch(1)
        >>> list(sampler)  # the simpler batch first
        [[0, 3], [1, 2]]
        ```
    """

    def __init__(
        self, lengths: Sequence[int] | np.ndarray, max_tokens: int, *, curriculum: bool = True, seed: int = 0
    ) -> None:
        self.max_tokens = max_tokens
        self.batches = token_budget_batches(lengths, max_tokens, seed)
        self._batch_of = np.empty(len(lengths), dtype=np.int64)  # sample index -> its batch
        for batch_index, batch in enumerate(self.batches):
            self._batch_of[batch] = batch_index
        self.sampler = CurriculumSampler(len(self.batches), curriculum=curriculum, seed=seed)

    def __iter__(self) -> Iterator[list[int]]:
        return (list(self.batches[b]) for b in self.sampler)

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def record(self, indices: torch.Tensor | Sequence[int], vectors: torch.Tensor) -> None:
        """File the per-sample complexity vectors `(n, num_moe_layers)` as their batches' mean vectors."""
        indices = torch.as_tensor(indices).reshape(-1)
        vectors = vectors.detach().to("cpu", torch.float32)
        batch_ids = torch.from_numpy(self._batch_of[indices.numpy()])  # (n,)
        for batch_id in batch_ids.unique().tolist():
            members = batch_ids == batch_id
            self.sampler.record([batch_id], vectors[members].mean(dim=0, keepdim=True))

    def sync(self) -> None:
        self.sampler.sync()

    def state_dict(self) -> dict[str, Any]:
        return {**self.sampler.state_dict(), "max_tokens": self.max_tokens}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("max_tokens") != self.max_tokens or state["num_samples"] != len(self.batches):
            raise ValueError(
                f"The checkpoint's curriculum is over {state['num_samples']} batches of max_tokens="
                f"{state.get('max_tokens')}; this run packs {len(self.batches)} of max_tokens={self.max_tokens}. "
                "Resume with the same data, seed and max_tokens."
            )
        self.sampler.load_state_dict({k: v for k, v in state.items() if k != "max_tokens"})
