"""Carry each training sample's dataset index through the data pipeline to `compute_loss`.

The curriculum needs to know *which* samples a training forward saw, to file their complexity vectors under
their dataset index. The sampler's indices cannot be matched to batches after the fact (worker prefetching,
accelerate's batch sharding and resume-skipping all sit in between), so the index rides along with the data:

1. `IndexedDataset` adds `"sample_index": i` to item `i` of the training set;
2. `IndexCollator` takes it out of every feature before the task's own collator runs (which may not know what
   to do with it) and puts it back as a `(batch,)` long tensor under the same key;
3. the trainer's `compute_loss` pops `"sample_index"` from the inputs before the forward.

Batches without the key (evaluation, prediction) pass through `IndexCollator` untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

SAMPLE_INDEX_KEY = "sample_index"


class IndexedDataset(Dataset):
    """View of a map-style dataset whose items also carry their index under `"sample_index"`.

    Args:
        dataset (`torch.utils.data.Dataset` or `datasets.Dataset`): a map-style dataset of dict-like items.

    Example:
        ```python
        >>> IndexedDataset([{"input_ids": [5, 6]}])[0]
        {'input_ids': [5, 6], 'sample_index': 0}
        ```
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        if SAMPLE_INDEX_KEY in item:
            raise KeyError(f"The training set already has a '{SAMPLE_INDEX_KEY}' column; rename it.")
        item[SAMPLE_INDEX_KEY] = int(index)
        return item


class IndexCollator:
    """Wrap a data collator so that a `"sample_index"` feature key bypasses it and comes out as a tensor.

    Args:
        collator (`Callable[[list[dict]], dict]`): the task's data collator.
    """

    def __init__(self, collator: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.collator = collator

    def __getattr__(self, name: str) -> Any:
        # Code that inspects the trainer's collator (e.g. for its `tokenizer`) sees the task's collator.
        if name == "collator":  # not set yet (unpickling): avoid recursing into ourselves
            raise AttributeError(name)
        return getattr(self.collator, name)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features or SAMPLE_INDEX_KEY not in features[0]:
            return self.collator(features)
        indices = [feature[SAMPLE_INDEX_KEY] for feature in features]
        batch = self.collator([{k: v for k, v in f.items() if k != SAMPLE_INDEX_KEY} for f in features])
        batch[SAMPLE_INDEX_KEY] = torch.tensor(indices, dtype=torch.long)  # (batch,)
        return batch
