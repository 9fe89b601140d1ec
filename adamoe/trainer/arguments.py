"""Training arguments: the transformers ones plus the few adamoe adds (curriculum, target loss, routing logs)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from transformers import Seq2SeqTrainingArguments, TrainingArguments

from ..files import is_secret_key


@dataclass
class AdaMoETrainingArguments(TrainingArguments):
    """`TrainingArguments` plus adamoe's options; every other field is the transformers one.

    The adamoe trainer also accepts plain `TrainingArguments` and then uses the defaults below.

    Example:
        ```python
        >>> args = AdaMoETrainingArguments(output_dir="out", curriculum=True, target_loss=0.35)
        ```
    """

    curriculum: bool = field(
        default=False,
        metadata={
            "help": "Curriculum learning (paper §3.2): after the first epoch, order the training samples by "
            "descending cosine similarity of their per-layer two-expert fractions to the simplest sample's. "
            "Replaces `train_sampling_strategy`; ignored for a dense model."
        },
    )
    target_loss: float | None = field(
        default=None,
        metadata={
            "help": "Training (task) loss whose first crossing, by the EMA of the logged losses, gives "
            "`time_to_target_s`. None: not measured."
        },
    )
    target_loss_smoothing: float = field(
        default=0.9,
        metadata={
            "help": "Factor of the bias-corrected EMA over logging events for the target-loss check, in [0, 1); "
            "0 = raw losses."
        },
    )
    max_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Batch the training set by tokens instead of by `per_device_train_batch_size` samples, as "
            "fairseq's --max-tokens (the paper: 4096 for FSMT and BART): fixed batches of similar lengths whose "
            "padded size stays within this budget, reordered every epoch (see adamoe/trainer/batching.py). "
            "None: batch by samples."
        },
    )
    log_routing: bool = field(
        default=True,
        metadata={
            "help": "At each logging step also log the per-layer two-expert fraction and expert load "
            "(the task loss, balance loss and overall two-expert fraction are always logged)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_loss is not None and not math.isfinite(self.target_loss):
            raise ValueError(f"target_loss must be a finite number or None, got {self.target_loss}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer or None, got {self.max_tokens}.")
        if not 0.0 <= self.target_loss_smoothing < 1.0:
            raise ValueError(f"target_loss_smoothing must be in [0, 1), got {self.target_loss_smoothing}.")

    def __getstate__(self) -> dict[str, Any]:
        # The Trainer pickles its arguments into every checkpoint as `training_args.bin`, and `push_to_hub`
        # uploads that file: a `hub_token` given in the config would be published with the weights. The
        # live object keeps it (pushing needs it); only the pickled copy goes without.
        return {name: None if is_secret_key(name) else value for name, value in self.__dict__.items()}

    # copy and deepcopy would otherwise go through `__getstate__`, and a copy would lose its token.
    def __copy__(self) -> AdaMoETrainingArguments:
        clone = self.__class__.__new__(self.__class__)
        clone.__dict__.update(self.__dict__)
        return clone

    def __deepcopy__(self, memo: dict[int, Any]) -> AdaMoETrainingArguments:
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone


@dataclass
class AdaMoESeq2SeqTrainingArguments(AdaMoETrainingArguments, Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` (`predict_with_generate`, generation settings) plus adamoe's options."""
