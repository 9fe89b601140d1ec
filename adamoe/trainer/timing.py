"""Training-time figures as the paper reports them: time to a target training loss, total training time,
throughput and effective expert FLOPs.

Clock: wall-clock between `on_train_begin` and `on_train_end`, minus the time spent in evaluation (the trainer
reports each `evaluate()` call through `exclude`), so periodic evaluation does not count as training.

Time to target: the logged training loss is smoothed by a bias-corrected exponential moving average over the
logging events (as Adam corrects its moments): `ema = smoothing * ema + (1 - smoothing) * loss` from `ema = 0`,
read as `ema / (1 - smoothing ** n)` after `n` events, and the target counts as reached at the first logging event
where that is `<= target_loss`. Without the correction, an EMA seeded with the first (highest) loss would keep
most of that loss's weight for many events (0.9 ** 4 = 66% after five), so a short run would never reach a
target its losses had long passed. The smoothed quantity is the *task* loss
(`task_loss`, logged by the adamoe trainer; plain `loss` with another trainer), so the balance loss, which
only MoE models have, does not skew comparisons with the dense baseline. Each logged value is already the mean
over `logging_steps` optimizer steps; compare runs with the same `logging_steps` and smoothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..moe.stats import RoutingStats
from .meters import RoutingMeter


class LossSmoother:
    """The bias-corrected EMA of the module docstring, fed one logged loss at a time.

    Example:
        ```python
        >>> smoother = LossSmoother(0.5)
        >>> [round(smoother.update(loss), 3) for loss in (2.0, 1.0, 0.6)]
        [2.0, 1.333, 0.914]
        ```
    """

    def __init__(self, smoothing: float, ema: float = 0.0, count: int = 0) -> None:
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}.")
        self.smoothing, self.ema, self.count = smoothing, ema, count

    def update(self, loss: float) -> float:
        """Add a logged loss; returns the smoothed loss so far."""
        self.ema = self.smoothing * self.ema + (1.0 - self.smoothing) * loss  # from 0, hence the correction
        self.count += 1
        return self.value

    @property
    def value(self) -> float | None:
        return None if self.count == 0 else self.ema / (1.0 - self.smoothing**self.count)


def count_tokens(inputs: Mapping[str, Any], *, is_encoder_decoder: bool) -> int:
    """Non-padding tokens in a batch: the `attention_mask` (else every input id), plus for encoder-decoder models
    the target tokens (`decoder_attention_mask`, else `labels != -100`)."""
    if "attention_mask" in inputs:
        tokens = int(inputs["attention_mask"].sum())
    elif "input_ids" in inputs:
        tokens = inputs["input_ids"].numel()
    else:
        tokens = 0
    if is_encoder_decoder:
        if "decoder_attention_mask" in inputs:
            tokens += int(inputs["decoder_attention_mask"].sum())
        elif "labels" in inputs:
            tokens += int((inputs["labels"] != -100).sum())
    return tokens


class TimingCallback(TrainerCallback):
    """Record training time, time to a target loss, tokens per second and the run's routing figures.

    The adamoe trainer adds one as `trainer.timing` and feeds it `record_batch` from every training forward;
    read the figures with `summary()` after `train()`.

    Args:
        target_loss (`float`, *optional*): training (task) loss to reach; `None` leaves `time_to_target_s` None.
        smoothing (`float`, defaults to `0.9`): EMA factor applied to the logged losses, bias-corrected (0 = no
            smoothing).
        reduce_sum (`Callable[[torch.Tensor], torch.Tensor]`, *optional*): collective sum over ranks, applied once
            at the end of training to the token and routing counts (the trainer passes accelerate's).

    Example:
        ```python
        >>> trainer.train()
        >>> trainer.timing.summary()
        {'train_time_s': 812.4, 'time_to_target_s': 301.7, 'tokens_per_second': 5120.3, ...}
        ```
    """

    def __init__(
        self,
        target_loss: float | None = None,
        smoothing: float = 0.9,
        reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        LossSmoother(smoothing)  # validates
        self.target_loss = target_loss
        self.smoothing = smoothing
        self.reduce_sum = reduce_sum
        self.routing = RoutingMeter()
        self._resume: dict[str, Any] | None = None
        self._reset()

    def _reset(self) -> None:
        self._smoother = LossSmoother(self.smoothing)
        self.time_to_target_s: float | None = None
        self.num_tokens = 0
        self.routing.reset()
        self._start: float | None = None
        self._stop: float | None = None
        self._excluded_s = 0.0
        self._cpu_start: float | None = None
        self._cpu_excluded_s = 0.0
        self._cpu_before_s = 0.0  # process CPU of the run this one resumes
        self._elapsed_before_s = 0.0  # training time of the run this one resumes
        self._final: dict[str, Any] | None = None

    # ---- fed by the trainer ----

    def record_batch(self, num_tokens: int, stats: RoutingStats | None = None) -> None:
        """Count one training forward: its non-padding tokens and, for MoE models, its routing."""
        self.num_tokens += num_tokens
        if stats is not None:
            self.routing.add(stats)

    def exclude(self, seconds: float, cpu_seconds: float = 0.0) -> None:
        """Leave `seconds` of wall clock and `cpu_seconds` of process CPU (e.g. an evaluation) out of the training
        time."""
        self._excluded_s += seconds
        self._cpu_excluded_s += cpu_seconds

    def cpu_elapsed_s(self) -> float | None:
        """This process's CPU seconds (all its threads) since training began, evaluation excluded; None before.

        Like `elapsed_s` it continues a resumed run's count. It exists to compare runs on a shared machine, where
        the CPU time of a process does not count the time it waited for a core. Under several ranks it is this
        rank's own.
        """
        if self._cpu_start is None:
            return None
        return self._cpu_before_s + time.process_time() - self._cpu_start - self._cpu_excluded_s

    def elapsed_s(self, now: float | None = None) -> float:
        """Training seconds so far (including a resumed run's), evaluation excluded."""
        if self._start is None:
            return self._elapsed_before_s
        end = self._stop if self._stop is not None else (time.perf_counter() if now is None else now)
        return self._elapsed_before_s + end - self._start - self._excluded_s

    @property
    def smoothed_loss(self) -> float | None:
        """The smoothed training loss so far (None before the first log)."""
        return self._smoother.value

    def observe_loss(self, loss: float, now: float | None = None) -> None:
        """Smooth one logged training loss and stamp the time if it reaches the target."""
        self._smoother.update(loss)
        if self.target_loss is not None and self.time_to_target_s is None and self.smoothed_loss <= self.target_loss:
            self.time_to_target_s = self.elapsed_s(now)

    # ---- TrainerCallback events ----

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._reset()
        if self._resume is not None:
            self._apply_state(self._resume)
            self._resume = None
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        logs = logs or {}
        loss = logs.get("task_loss", logs.get("loss"))
        if loss is not None and self._start is not None and self._stop is None:
            self.observe_loss(float(loss))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._stop = time.perf_counter()
        if self.reduce_sum is not None:
            # A collective: on_train_end runs on every rank. One tensor for the tokens, one for the routing.
            self.num_tokens = int(self.reduce_sum(torch.tensor([float(self.num_tokens)], dtype=torch.float64)))
            self.routing.reduce(self.reduce_sum)
        self._final = self.summary()

    # ---- results ----

    def summary(self) -> dict[str, Any]:
        """The run's figures, as the CLI writes them to results.json.

        Keys: `train_time_s`, `time_to_target_s` (None if the target was never reached or not set),
        `target_loss`, `tokens_per_second`, `num_tokens`, `two_expert_fraction`, `two_expert_fraction_per_layer`,
        `flops_vs_top2`, `experts_per_token`, `flops_vs_top_k`, `expert_load_max_over_mean` (the routing keys are
        None for a dense model). After training the token and routing counts are summed over ranks.
        """
        if self._final is not None:
            return dict(self._final)
        train_time = self.elapsed_s()
        routing = self.routing.figures() if self.routing else None
        return {
            "train_time_s": train_time,
            "time_to_target_s": self.time_to_target_s,
            "target_loss": self.target_loss,
            "tokens_per_second": self.num_tokens / train_time if train_time > 0 else None,
            "num_tokens": self.num_tokens,
            "two_expert_fraction": None if routing is None else routing["two_expert_fraction"],
            "two_expert_fraction_per_layer": None if routing is None else routing["two_expert_fraction_per_layer"],
            "flops_vs_top2": None if routing is None else routing["flops_vs_top2"],
            "experts_per_token": None if routing is None else routing["experts_per_token"],
            "flops_vs_top_k": None if routing is None else routing["flops_vs_top_k"],
            "expert_load_max_over_mean": None if routing is None else routing["expert_load_max_over_mean"],
        }

    # ---- checkpointing ----

    def state_dict(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
        """Clocks and counts so far; with `reduce_sum` (a collective: call on every rank) the token and routing
        counts are summed over ranks, as a checkpoint needs, while this rank's own counts stay local."""
        num_tokens, routing = self.num_tokens, self.routing
        if reduce_sum is not None:
            num_tokens = int(reduce_sum(torch.tensor([float(num_tokens)], dtype=torch.float64)))
            routing = RoutingMeter()
            routing.load_state_dict(self.routing.state_dict())
            routing.reduce(reduce_sum)
        return {
            "elapsed_s": self.elapsed_s(),
            "cpu_elapsed_s": self.cpu_elapsed_s(),
            "smoothed_loss": self.smoothed_loss,
            "ema": self._smoother.ema,
            "num_losses": self._smoother.count,
            "time_to_target_s": self.time_to_target_s,
            "num_tokens": num_tokens,
            "routing": routing.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], with_counts: bool = True) -> None:
        """Continue the clocks (and, with `with_counts`, the token and routing counts) of a checkpointed run at
        the next `on_train_begin`. Under several ranks only one should take the counts, which are global."""
        self._resume = dict(state)
        if not with_counts:
            self._resume.update(num_tokens=0, routing={})

    def _apply_state(self, state: dict[str, Any]) -> None:
        self._elapsed_before_s = float(state["elapsed_s"])
        self._cpu_before_s = float(state.get("cpu_elapsed_s") or 0.0)  # None: saved before training began
        # A state with only the smoothed value (no bias-correction terms): continue from it as settled.
        settled = state["smoothed_loss"]
        self._smoother = LossSmoother(
            self.smoothing,
            ema=float(state.get("ema", settled or 0.0)),
            count=int(state.get("num_losses", 0 if settled is None else 10**6)),
        )
        self.time_to_target_s = state["time_to_target_s"]
        self.num_tokens = int(state["num_tokens"])
        self.routing.load_state_dict(state["routing"])
