"""adamoe's part of a checkpoint: what a checkpoint saves beyond the stock Trainer's, and a resume restores.

Three files, written and read here only, so their names and formats have one definition:

- `adamoe_curriculum.pt`: the curriculum sampler's state (`training_order.state_dict()`: the per-sample
  complexity vectors and the epoch), when the run has a curriculum or token budgets;
- `adamoe_timing.pt`: the timing callback's clock and counts (`TimingCallback.state_dict()`), summed over ranks;
- `adamoe_train_loss.json`: `{"loss_sum": ..., "global_step": ...}`, the training loss summed over every optimizer
  step so far, so that a resumed run's reported training loss covers the whole run.

A checkpoint written before a file existed still resumes: the missing part starts afresh (with a warning for
the curriculum, whose absence changes the data order).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerState

logger = logging.getLogger(__name__)

CURRICULUM_STATE_NAME = "adamoe_curriculum.pt"
TIMING_STATE_NAME = "adamoe_timing.pt"
LOSS_STATE_NAME = "adamoe_train_loss.json"


@dataclass
class RunState:
    """The run state in one checkpoint.

    Args:
        global_step: Optimizer steps finished (the stock `trainer_state.json`'s, read on load).
        loss_sum: The training loss summed over those steps, as the stock loop sums it (mean over ranks).
        timing: `TimingCallback.state_dict()`, or None when the checkpoint has none.
        curriculum: The curriculum or token-budget sampler's `state_dict()`, or None.
    """

    global_step: int = 0
    loss_sum: float = 0.0
    timing: dict[str, Any] | None = None
    curriculum: dict[str, Any] | None = None

    def save(self, folder: str | os.PathLike) -> None:
        """Write the state into a checkpoint folder (the saving process only)."""
        os.makedirs(folder, exist_ok=True)
        if self.curriculum is not None:
            torch.save(self.curriculum, os.path.join(folder, CURRICULUM_STATE_NAME))
        if self.timing is not None:
            torch.save(self.timing, os.path.join(folder, TIMING_STATE_NAME))
        with open(os.path.join(folder, LOSS_STATE_NAME), "w") as f:
            json.dump({"loss_sum": self.loss_sum, "global_step": self.global_step}, f)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> RunState:
        """The state of the checkpoint in `folder`; a part it lacks is left at its empty value."""
        folder = os.fspath(folder)
        state = cls(global_step=TrainerState.load_from_json(os.path.join(folder, "trainer_state.json")).global_step)
        timing = os.path.join(folder, TIMING_STATE_NAME)
        if os.path.isfile(timing):
            state.timing = torch.load(timing, weights_only=True)
        loss = os.path.join(folder, LOSS_STATE_NAME)
        if os.path.isfile(loss):
            with open(loss) as f:
                state.loss_sum = float(json.load(f)["loss_sum"])
        curriculum = os.path.join(folder, CURRICULUM_STATE_NAME)
        if os.path.isfile(curriculum):
            state.curriculum = torch.load(curriculum, weights_only=True)
        return state

    def restore_curriculum(self, sampler: Any, folder: str) -> None:
        """Load the curriculum into a freshly built sampler, or say that the order starts afresh."""
        if self.curriculum is not None:
            sampler.load_state_dict(self.curriculum)
        else:
            path = os.path.join(folder, CURRICULUM_STATE_NAME)
            logger.warning(f"{path} not found: the curriculum starts afresh (random order until vectors exist).")
