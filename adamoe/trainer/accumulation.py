"""The balance loss under gradient accumulation: one rule, and the transformers internals it rests on.

Under gradient accumulation the Trainer's `training_step` divides each micro-batch's loss by the number of
micro-batches, unless it takes the loss to be normalised already by `num_items_in_batch` (the tokens or samples
of the whole accumulated step), which it hands the model as a loss keyword. The balance loss is always a
per-micro-batch mean, so it must be divided by the number of micro-batches exactly when the Trainer does not
divide the total: then a step over k micro-batches equals one step over a k-times-larger batch for the task loss
and the balance loss alike (tests/trainer/test_trainer.py).

The Trainer decides from these internals (transformers 5.17 to 5.x; tests/trainer/test_private_hooks.py pins
them):

- `Trainer.model_accepts_loss_kwargs`: set in `__init__` from whether `forward` takes `**kwargs`. Most task
  heads (BERT/RoBERTa classification and QA, T5, BART, FSMT) take `**kwargs` but still return a per-batch mean,
  so under accumulation their loss would grow with the number of micro-batches (huggingface/transformers#47688).
  `model_normalises_by_num_items` tells the heads that do normalise (they call `self.loss_function(...,
  **kwargs)` in `forward`, e.g. GPT-2 and Llama) from the others, and the trainer sets the flag to match;
- `Trainer.compute_loss_func`: a user loss function, which the Trainer takes to normalise by the count;
- `Trainer.loss_is_scaled_for_ga`: an explicit override, newer than transformers 5.17, used where it exists;
- `Trainer.current_gradient_accumulation_steps`: the micro-batches of the current optimizer step, set by the loop.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn


def model_normalises_by_num_items(model: nn.Module) -> bool:
    """Whether `model`'s loss is normalised by the `num_items_in_batch` the Trainer passes under gradient
    accumulation: an explicit `accepts_loss_kwargs` says so; otherwise the heads that do it call
    `self.loss_function(..., **kwargs)` in `forward` (e.g. GPT-2), the others compute a per-batch mean."""
    if hasattr(model, "accepts_loss_kwargs"):
        return bool(model.accepts_loss_kwargs)
    try:
        source = inspect.getsource(type(model).forward)
    except (OSError, TypeError):  # no source (compiled, interactive): keep the Trainer's own assumption
        return True
    return "loss_function" in source


def loss_is_scaled_for_accumulation(trainer: Any, num_items_in_batch: torch.Tensor | int | None) -> bool:
    """Whether the Trainer takes this micro-batch's task loss as already a share of the accumulated step (and so
    does not divide it by the number of micro-batches)."""
    explicit = getattr(trainer, "loss_is_scaled_for_ga", None)
    if explicit is not None:
        return bool(explicit)
    return bool(trainer.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
        trainer.compute_loss_func is not None
    )


def micro_batches(trainer: Any) -> int:
    """The micro-batches of the optimizer step in progress (1 outside the training loop)."""
    return getattr(trainer, "current_gradient_accumulation_steps", 1)
