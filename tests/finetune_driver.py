"""Run `adamoe <args>` in a fresh process for the resume tests (`python tests/finetune_driver.py finetune ...`).

Environment:
    ADAMOE_TEST_ORDER_LOG: append one JSON line `[step, [sample indices]]` per training forward, where `step` is
        the optimizer step the forward belongs to (1-based).
    ADAMOE_TEST_KILL_AT: SIGKILL this process when optimizer step k + 1 begins: a real crash, in which no
        `finally`, atexit handler or flush runs.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import torch

from adamoe.cli import app
from adamoe.trainer import AdaMoETrainerMixin

ORDER_LOG = os.environ.get("ADAMOE_TEST_ORDER_LOG")
KILL_AT = int(os.environ.get("ADAMOE_TEST_KILL_AT", "-1"))
_compute_loss = AdaMoETrainerMixin.compute_loss


def compute_loss(self: Any, model: torch.nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
    if model.training:
        if self.state.global_step == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        if ORDER_LOG and "sample_index" in inputs:
            with open(ORDER_LOG, "a") as f:
                f.write(json.dumps([self.state.global_step + 1, inputs["sample_index"].tolist()]) + "\n")
    return _compute_loss(self, model, inputs, *args, **kwargs)


if __name__ == "__main__":
    torch.set_num_threads(1)  # the same arithmetic in every run, and two runs side by side share 2 cores
    AdaMoETrainerMixin.compute_loss = compute_loss
    app(sys.argv[1:], prog_name="adamoe")
