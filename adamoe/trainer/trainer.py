"""`AdaMoETrainer` / `AdaMoESeq2SeqTrainer`: the transformers trainers with the balance loss, routing logs,
curriculum ordering and the paper's timing figures added at their hooks.

Three mixins, one concern each, all at the Trainer's hooks:

- `AdaMoETrainerMixin` (here): what makes it an MoE trainer: the training terms (`compute_loss`,
  `training_step`), the logs (`log`), evaluation and `train` (which notes and checks the checkpoint being
  resumed and restores its timing and loss state); it registers `TimingCallback` (public, `trainer.timing`),
  `_CheckpointCallback` (syncs the curriculum across ranks) and the console and JSON-lines loggers.
- `DataOrderMixin` (`data_order.py`): the order of the training data: the curriculum and token-budget samplers
  (`trainer.training_order`) and their state on resume.
- `AtomicCheckpointMixin` (`checkpointing.py`): every checkpoint written aside and renamed into place, with the
  curriculum, timing and loss state and never with NaN or infinite numbers, so a crash never leaves a
  half-written checkpoint for `--resume` to pick up.

What a training step does beyond the stock trainer:

- the task loss comes from the model as usual; for an MoE model `adamoe.balance_loss(model)` (already scaled by
  `aux_loss_coef`) is added in training only, so it never reaches `eval_loss` or a perplexity;
- the routing of that same forward (`adamoe.routing_stats`) feeds the logs, the timing figures and, with
  `curriculum=True`, the per-sample complexity vectors, filed under the dataset index that `IndexedDataset`
  attaches as `"sample_index"` (see `indexing.py`) and that `compute_loss` pops before the forward;
- with `max_tokens`, the training batches are fixed token budgets reordered per epoch (see `batching.py`);
- a router that produces NaN or infinite logits stops the run with a `RouterNumericsError` naming the layer
  and the optimizer step, instead of training on garbage.

Under data parallelism (`torchrun` / `accelerate launch`, see docs/scale-out.md) every rank computes the same
curriculum order and accelerate shards its batches; logged losses, routing figures and timing counts are summed
over ranks; only the process that `args.should_save` names writes files.

A dense model (the paper's Dense baseline) trains through the same code with no balance loss and no routing.

The parts with logic of their own (curriculum, batching, checkpoint files, timing, meters, console) are in their
own modules.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn
from transformers import (
    PrinterCallback,
    ProgressCallback,
    Seq2SeqTrainer,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_utils import (
    TrainOutput,
    get_last_checkpoint,
)

from ..moe.router import RouterNumericsError
from ..moe.stats import LOST_GRADIENT, RoutingStats, balance_loss, routing_stats, update_routing_state
from ..patching.loading import check_patched_consistently
from ..patching.patch import is_moe_model
from .accumulation import loss_is_scaled_for_accumulation, micro_batches, model_normalises_by_num_items
from .checkpointing import AtomicCheckpointMixin, check_checkpoint_files, check_resumable_without_fsdp
from .console import CompactPrinterCallback, CompactProgressCallback, JsonLinesLogCallback
from .data_order import DataOrderMixin
from .generation import decoder_only_prediction_step
from .indexing import SAMPLE_INDEX_KEY, IndexCollator
from .meters import RoutingMeter
from .state import RunState
from .timing import TimingCallback, count_tokens

logger = logging.getLogger(__name__)


class AdaMoETrainerMixin:
    """Hooks shared by `AdaMoETrainer` and `AdaMoESeq2SeqTrainer`; list it before the transformers trainer.

    Reads `curriculum`, `target_loss`, `target_loss_smoothing` and `log_routing` from the training arguments
    (`AdaMoETrainingArguments`); plain `TrainingArguments` mean no curriculum and no target.

    Attributes:
        timing (`TimingCallback`): training-time, throughput and routing figures; `timing.summary()` after
            `train()`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._is_moe = False
        self._check_model(self.model)
        if self.args.fsdp and not (self.is_fsdp_enabled or getattr(self, "is_fsdp_xla_enabled", False)):
            # accelerate turns FSDP on only for accelerator devices; on CPU the stock Trainer says nothing.
            logger.warning(
                "fsdp is set, but accelerate did not enable FSDP (it does only on GPUs and other accelerators, not "
                "on CPU): every process holds the whole model, as in plain data-parallel training."
            )
        if self.model_accepts_loss_kwargs and not model_normalises_by_num_items(
            self.accelerator.unwrap_model(self.model)
        ):
            self.model_accepts_loss_kwargs = False  # the stock division by micro-batches instead (accumulation.py)
        self.data_collator = IndexCollator(self.data_collator)
        self.timing = TimingCallback(
            target_loss=getattr(self.args, "target_loss", None),
            smoothing=getattr(self.args, "target_loss_smoothing", 0.9),
            reduce_sum=self._reduce_sum if self.accelerator.num_processes > 1 else None,
        )
        self.add_callback(self.timing)
        self.add_callback(_CheckpointCallback(self))
        # One compact console line per log; the full logs go to the reporters and to trainer_log.jsonl.
        if self.pop_callback(ProgressCallback) is not None:
            self.add_callback(CompactProgressCallback(self.timing))
        if self.pop_callback(PrinterCallback) is not None:
            self.add_callback(CompactPrinterCallback(self.timing))
        self.add_callback(JsonLinesLogCallback())
        self.training_order = None
        self._resume_checkpoint: str | None = None
        self._resumed = RunState()  # the state of the checkpoint being resumed (state.py)
        self._interval_routing = RoutingMeter()
        self._reset_interval(step=0)
        # The training loss summed over optimizer steps (as the stock loop sums it), this `train()` call's and the
        # resumed checkpoint's, so that `run_training_loss` covers the whole run.
        self._run_loss_sum = torch.zeros((), device=self.args.device)
        if getattr(self.args, "curriculum", False):
            if not self._is_moe:
                logger.warning("curriculum=True is ignored: the model has no MoE blocks, so no routing to order by.")
            elif self.args.train_sampling_strategy != "random":
                logger.warning(
                    f"curriculum=True replaces train_sampling_strategy={self.args.train_sampling_strategy!r}."
                )

    # ---- model checks ----

    def _check_model(self, model: nn.Module | None) -> None:
        if model is None:
            return
        # A patched checkpoint loaded with plain transformers has the `adamoe` config key but dense, randomly
        # initialised FFNs; training it would silently fine-tune the wrong model.
        check_patched_consistently(model)
        self._is_moe = is_moe_model(model)
        # transformers 5.25 renames gradient_checkpointing to activation_checkpointing; 5.17 knows only the old name.
        enabled = getattr(self.args, "activation_checkpointing", None) or self.args.gradient_checkpointing
        kwargs = getattr(self.args, "activation_checkpointing_kwargs", None) or self.args.gradient_checkpointing_kwargs
        if self._is_moe and enabled and (kwargs or {}).get("use_reentrant", False):
            # Found here, before training starts; balance_loss would find it at the first step (moe/stats.py).
            raise ValueError(LOST_GRADIENT.format(name="every MoE block"))
        if self._is_moe and self.args.n_gpu > 1:
            # nn.DataParallel replicates the blocks per step and their routing never reaches the original.
            raise ValueError("MoE models need one process per GPU (torchrun / accelerate launch), not DataParallel.")

    def call_model_init(self, trial: Any = None) -> nn.Module:
        model = super().call_model_init(trial)
        self._check_model(model)
        return model

    # ---- loss ----

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The task loss, plus in training the balance loss of the same forward (see the module docstring)."""
        sample_index = inputs.get(SAMPLE_INDEX_KEY)  # (batch,) or None
        if sample_index is not None:
            inputs = {k: v for k, v in inputs.items() if k != SAMPLE_INDEX_KEY}
        try:
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
        except RouterNumericsError as err:
            # The block names the layer; only the trainer knows when. global_step counts finished optimizer steps.
            when = (
                f"optimizer step {self.state.global_step + 1}"
                if model.training
                else f"evaluation after optimizer step {self.state.global_step}"
            )
            raise RouterNumericsError(f"{err} (Raised in {when}, epoch {self.state.epoch or 0:.2f}.)") from err
        if model.training:
            loss = self._add_training_terms(model, inputs, loss, sample_index, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _add_training_terms(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        task_loss: torch.Tensor,
        sample_index: torch.Tensor | None,
        num_items_in_batch: torch.Tensor | int | None,
    ) -> torch.Tensor:
        # The task loss as the Trainer will scale it, and the balance loss scaled alike (accumulation.py); the sums
        # below are per-optimizer-step values that add up, like the Trainer's logged "loss", to task + balance.
        scaled = loss_is_scaled_for_accumulation(self, num_items_in_batch)
        micro = micro_batches(self)
        self._task_loss_sum += task_loss.detach().float().to(self._task_loss_sum.device) / (1 if scaled else micro)

        stats: RoutingStats | None = None
        loss = task_loss
        if self._is_moe:
            unwrapped = self.accelerator.unwrap_model(model)
            balance = balance_loss(unwrapped)
            stats = routing_stats(unwrapped)
            loss = task_loss + (balance / micro if scaled else balance)
            self._balance_loss_sum += balance.detach().float().to(self._balance_loss_sum.device) / micro
            self._interval_routing.add(stats)
            if self.training_order is not None and sample_index is not None:
                if stats.per_sample is None:
                    raise ValueError(
                        "curriculum=True needs per-sample routing, but the MoE blocks saw flat token tensors."
                    )
                self.training_order.record(sample_index, stats.per_sample)
        is_encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
        self.timing.record_batch(count_tokens(inputs, is_encoder_decoder=is_encoder_decoder), stats)
        return loss

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._is_moe:
            # After the backward, where a checkpointed forward has been recomputed with the state it first saw.
            update_routing_state(self.accelerator.unwrap_model(model))
        self._run_loss_sum += loss.detach().float().to(self._run_loss_sum.device)
        return loss

    @property
    def resumed_global_step(self) -> int:
        """The optimizer steps of the checkpoint this `train()` call resumed (0 for a fresh start)."""
        return self._resumed.global_step

    def _loss_sum_so_far(self) -> float:
        """The summed training loss of every step up to now, this rank's or, under data parallelism, the mean over
        ranks (a collective: call on every rank)."""
        local = self._run_loss_sum
        if self.accelerator.num_processes > 1:
            local = self._reduce_sum(local) / self.accelerator.num_processes
        return self._resumed.loss_sum + float(local)

    def run_training_loss(self, train_output: TrainOutput) -> float:
        """The mean training loss per optimizer step over the whole run, and over all ranks (a collective: call on
        every rank).

        The stock `training_loss` covers only the steps of the last `train()` call, so a resumed run would report
        its tail only; and under several processes it adds the steps since the last log as this rank's own loss,
        not the mean over ranks that the logged steps hold, so it differs from rank to rank."""
        total = self._loss_sum_so_far()
        if self.resumed_global_step == 0 and self.accelerator.num_processes == 1:
            return train_output.training_loss
        return total / max(train_output.global_step, 1)

    # ---- logging ----

    def _reset_interval(self, step: int) -> None:
        self._task_loss_sum = torch.zeros((), device=self.args.device)
        self._balance_loss_sum = torch.zeros((), device=self.args.device)
        self._interval_routing.reset()
        self._last_logged_step = step

    def _reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (a collective); CPU tensors travel through the accelerator's device."""
        return self.accelerator.reduce(tensor.to(self.accelerator.device), reduction="sum").cpu()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add to each training log the task loss, balance loss and routing figures since the previous one, and the
        process CPU seconds of training so far (`train_cpu_s`)."""
        steps = self.state.global_step - self._last_logged_step
        if "loss" in logs and steps > 0:  # a training log (eval logs carry "eval_loss", the final one "train_loss")
            world = self.accelerator.num_processes
            losses = torch.stack([self._task_loss_sum, self._balance_loss_sum])
            if world > 1:
                losses = self._reduce_sum(losses) / world  # the mean over ranks, as the Trainer's "loss"
            logs["task_loss"] = float(losses[0]) / steps
            if self._is_moe:
                logs["balance_loss"] = float(losses[1]) / steps
                if world > 1:
                    self._interval_routing.reduce(self._reduce_sum)
                logs.update(self._routing_logs(self._interval_routing))
            self._reset_interval(self.state.global_step)
            cpu = self.timing.cpu_elapsed_s()
            if cpu is not None:
                # Process CPU seconds beside the Trainer's wall clock: the steadier time on a shared machine.
                logs["train_cpu_s"] = cpu
        super().log(logs, start_time)

    def _routing_logs(self, meter: RoutingMeter) -> dict[str, float]:
        if not meter:
            return {}
        figures = meter.figures()
        logs = {"two_expert_fraction": figures["two_expert_fraction"], "flops_vs_top2": figures["flops_vs_top2"]}
        if getattr(self.args, "log_routing", True):
            for name, fraction in figures["two_expert_fraction_per_layer"].items():
                logs[f"two_expert_fraction/{name}"] = fraction
            for name, load in figures["expert_load_max_over_mean"].items():
                logs[f"expert_load_max_over_mean/{name}"] = load
        return logs

    # ---- evaluation and training entry points ----

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """The stock `evaluate`; its time is left out of the training time when it runs during training."""
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            if self.is_in_train:
                self.timing.exclude(time.perf_counter() - start, time.process_time() - cpu_start)

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ) -> TrainOutput:
        """The stock `train`; when resuming, the checkpoint's curriculum and timing state are restored too."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)  # None: the stock train raises below
        self._resume_checkpoint = checkpoint if isinstance(checkpoint, str) else None
        self._run_loss_sum.zero_()
        self._resumed = RunState()
        if self._resume_checkpoint is not None:
            # A damaged file would otherwise surface as a raw safetensors or zip error deep in the stock loader.
            check_checkpoint_files(self._resume_checkpoint)
            if not self.is_fsdp_enabled:  # the stock loader would raise a bare ValueError for it
                check_resumable_without_fsdp(self._resume_checkpoint)
            self._resumed = RunState.load(self._resume_checkpoint)
            if self._resumed.timing is not None:
                # Counts in the file are summed over ranks: one rank carries them on, or they would be counted W times.
                self.timing.load_state_dict(self._resumed.timing, with_counts=self.args.process_index == 0)
        try:
            return super().train(
                resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval
            )
        finally:
            self._resume_checkpoint = None


class _CheckpointCallback(TrainerCallback):
    """Keep the curriculum consistent across ranks (the trainer's `_save_checkpoint` writes it to checkpoints)."""

    def __init__(self, trainer: AdaMoETrainerMixin) -> None:
        self.trainer = trainer

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.trainer._reset_interval(step=state.global_step)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # Every rank must hold every sample's vector before the next epoch's order is computed.
        if self.trainer.training_order is not None:
            self.trainer.training_order.sync()


class AdaMoETrainer(AdaMoETrainerMixin, DataOrderMixin, AtomicCheckpointMixin, Trainer):
    """`transformers.Trainer` for adamoe models (and their dense baselines).

    Adds the balance loss in training, routing figures to the logs, the curriculum (`curriculum=True`) and the
    timing figures (`trainer.timing.summary()`). Refuses a patched checkpoint that was loaded without its MoE
    blocks (`adamoe.CheckpointError`: load it with `adamoe.from_pretrained`).

    Example:
        ```python
        >>> model = adamoe.moeify(AutoModelForSequenceClassification.from_pretrained("bert-base-uncased"),
        ...                       adamoe.MoEConfig(num_experts=16, threshold=0.1))
        >>> args = AdaMoETrainingArguments(output_dir="out", curriculum=True, target_loss=0.3)
        >>> trainer = AdaMoETrainer(model=model, args=args, train_dataset=train, eval_dataset=dev)
        >>> trainer.train()
        >>> trainer.timing.summary()["time_to_target_s"]
        ```
    """


class AdaMoESeq2SeqTrainer(AdaMoETrainerMixin, DataOrderMixin, AtomicCheckpointMixin, Seq2SeqTrainer):
    """`transformers.Seq2SeqTrainer` (`predict_with_generate`) with the same additions as `AdaMoETrainer`;
    use it with `AdaMoESeq2SeqTrainingArguments`. A decoder-only model generates from each example's prompt
    (`generation.py`), so the generation tasks take a decoder-only LLM as well as an encoder-decoder model."""

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
        **gen_kwargs: Any,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        config = getattr(self.accelerator.unwrap_model(model), "config", None)
        if prediction_loss_only or not self.args.predict_with_generate or getattr(config, "is_encoder_decoder", True):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
        return decoder_only_prediction_step(self, model, inputs)
