"""`DataOrderMixin`: the order of the training data, at the Trainer's dataloader and sampler hooks.

With `curriculum=True` (the paper's routing-aware curriculum, `curriculum.py`) the training set is ordered by the
samples' routing complexity from the second epoch on; with `max_tokens` it is batched by token budgets
(`batching.py`), reordered per epoch, by the curriculum when it is on. Either way the order object is
`trainer.training_order`, whose state every checkpoint holds (`state.CURRICULUM_STATE_NAME`) and a resumed run
restores, so the resumed epoch trains the same batches in the same order.

It reads `self._is_moe`, `self._resume_checkpoint` and `self._resumed` (the checkpoint's `RunState`), set by
`AdaMoETrainerMixin`.
"""

from __future__ import annotations

import logging
from typing import Any

import datasets
from torch.utils.data import DataLoader, IterableDataset, Sampler
from transformers.trainer_utils import has_length

from .batching import TokenBudgetBatchSampler, sample_lengths
from .curriculum import CurriculumSampler
from .indexing import SAMPLE_INDEX_KEY, IndexedDataset

logger = logging.getLogger(__name__)


class DataOrderMixin:
    """The training data order (curriculum, token budgets) of the adamoe trainers; list it before `Trainer`.

    Attributes:
        training_order (`CurriculumSampler`, `TokenBudgetBatchSampler` or `None`): the order of the current
            `train()` call when the curriculum is on: a sampler of samples, or of token-budget batches.
    """

    training_order: CurriculumSampler | TokenBudgetBatchSampler | None = None

    def _curriculum_active(self) -> bool:
        dataset = self.train_dataset
        return (
            bool(getattr(self.args, "curriculum", False))
            and self._is_moe
            and dataset is not None
            and not isinstance(dataset, IterableDataset)
            and has_length(dataset)
        )

    def get_train_dataloader(self) -> DataLoader:
        max_tokens = getattr(self.args, "max_tokens", None)
        if max_tokens is None and not self._curriculum_active():
            return super().get_train_dataloader()
        dataset = self.train_dataset
        if isinstance(dataset, datasets.Dataset):
            # Drop unused columns at the dataset level, as the stock path does, before the wrapper hides the type.
            dataset = self._remove_unused_columns(dataset, description="Training")
        if max_tokens is not None:
            return self._token_budget_dataloader(dataset, max_tokens)
        # The stock body with the dataset wrapped so each item carries its "sample_index" (see indexing.py).
        return self._get_dataloader(
            dataset=IndexedDataset(dataset),
            description="Training",
            batch_size=self._train_batch_size,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )

    def _token_budget_dataloader(self, dataset: Any, max_tokens: int) -> DataLoader:
        """Batches of at most `max_tokens` padded tokens, reordered per epoch (see batching.py)."""
        if dataset is None or isinstance(dataset, IterableDataset) or not has_length(dataset):
            raise ValueError("max_tokens needs a map-style training set with a length (it packs the batches upfront).")
        curriculum = self._curriculum_active()
        sampler = TokenBudgetBatchSampler(
            sample_lengths(dataset), max_tokens, curriculum=curriculum, seed=self._data_seed()
        )
        collator = self.data_collator
        if not isinstance(dataset, datasets.Dataset):
            collator = self._get_collator_with_removed_columns(collator, description="Training")
        if curriculum:
            self._restore_curriculum(sampler)
            self.training_order = sampler
            dataset = IndexedDataset(dataset)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers,
            prefetch_factor=self.args.dataloader_prefetch_factor,
        )
        # accelerate hands rank r the batches r, r + W, ... of the one global order.
        return self.accelerator.prepare(loader)

    def _get_train_sampler(self, train_dataset: Any = None) -> Sampler | None:
        if not self._curriculum_active():
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        # One global order, the same on every rank; accelerate then hands rank r the batches r, r + W, ...
        sampler = CurriculumSampler(len(dataset), curriculum=True, seed=self._data_seed())
        self._restore_curriculum(sampler)
        self.training_order = sampler
        return sampler

    def _data_seed(self) -> int:
        return self.args.data_seed if self.args.data_seed is not None else self.args.seed

    def _restore_curriculum(self, sampler: CurriculumSampler | TokenBudgetBatchSampler) -> None:
        """Load the curriculum state of the checkpoint being resumed, if any."""
        if self._resume_checkpoint is not None:
            self._resumed.restore_curriculum(sampler, self._resume_checkpoint)

    def _set_signature_columns_if_needed(self) -> None:
        # `remove_unused_columns` drops every feature the model's forward does not accept; "sample_index" must
        # survive to `compute_loss`, which removes it before the forward.
        super()._set_signature_columns_if_needed()
        if SAMPLE_INDEX_KEY not in self._signature_columns:
            self._signature_columns.append(SAMPLE_INDEX_KEY)
