"""The fine-tuning recipe: one config in, a trained checkpoint and `results.json` out. Reads top to bottom.

`adamoe finetune` is a thin layer over `finetune(FinetuneConfig(...))`; Python users call it directly:

```python
from adamoe import MoEConfig
from adamoe.run.recipe import FinetuneConfig, finetune
from adamoe.tasks import DataArgs

results = finetune(FinetuneConfig(task="sst2", model="bert-base-uncased", moe=MoEConfig(threshold=0.1),
                                  data=DataArgs(max_train_samples=2000), training={"num_train_epochs": 1}))
print(results["metrics"]["accuracy"], results["train_time_s"])
```

The run config itself (`FinetuneConfig`, its YAML form and validation) lives in `adamoe.run.config`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import EvalPrediction, PreTrainedModel, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..files import write_json_atomically, write_text_atomically
from ..moe.config import MoEConfig
from ..moe.stats import PairCounter, check_routing_state
from ..patching.loading import (
    load_model_and_tokenizer,
    moe_config_of,
)
from ..patching.lora import lora_config
from ..patching.patch import is_moe_model, set_routing
from ..tasks import DataArgs, get_task
from ..tasks.base import Task
from ..trainer import AdaMoESeq2SeqTrainer, AdaMoESeq2SeqTrainingArguments, AdaMoETrainer, AdaMoETrainingArguments
from ..trainer.batching import sample_lengths
from ..trainer.checkpointing import STAGING_DIR, check_resumable_without_fsdp, last_usable_checkpoint
from .config import FinetuneConfig, RunConfigError, run_data_args
from .model_card import write_model_card
from .output_dir import (
    RESULTS_NAME,
    RUN_CONFIG_NAME,
    OutputDirError,
    RunLock,
    check_output_dir,
    claim_in_run,
    clear_run_files,
    owned_by_run,
    write_manifest,
)
from .provenance import provenance

logger = logging.getLogger(__name__)

# What adamoe changes from transformers' TrainingArguments defaults, and why.
TRAINING_DEFAULTS: dict[str, Any] = {
    "eval_strategy": "no",  # finetune() evaluates once at the end; ask for "epoch" to track progress
    "save_strategy": "epoch",
    "logging_steps": 50,
    "save_total_limit": 2,  # resume needs the last checkpoint, not all of them
    "report_to": "none",  # no tracker is configured by default; pass report_to to use one
    # Pinned memory only speeds up copies to an accelerator; without one torch warns on every dataloader.
    "dataloader_pin_memory": torch.accelerator.is_available(),
}


def check_run_dir(config: FinetuneConfig) -> Path:
    """Refuse an output folder this run may not write (see `adamoe.run.output_dir`); only looks, never writes.

    With `resume`, the folder must hold a checkpoint of a run with the same task, model, MoE and data settings.
    """
    out = check_output_dir(config.output_dir, overwrite=config.overwrite, resume=config.resume)
    model = Path(config.model).expanduser()
    if model.exists() and (model.resolve() == out or out in model.resolve().parents):
        raise OutputDirError(
            f"--model {config.model} is in --output-dir {config.output_dir}: the run would replace the model it "
            "starts from. Write the run to a new folder."
        )
    if not config.resume:
        return out
    if not (out.is_dir() and get_last_checkpoint(str(out))):
        raise OutputDirError(f"--resume: no checkpoint-* folder in {config.output_dir} to continue from.")
    saved = out / RUN_CONFIG_NAME
    if saved.exists():
        previous = _with_current_defaults(json.loads(saved.read_text()))
        mismatched = {k for k in ("task", "model", "moe", "data") if previous.get(k) != config.to_dict()[k]}
        if mismatched:
            raise OutputDirError(
                f"--resume: the run in {config.output_dir} differs in {sorted(mismatched)}; resume with the same "
                "settings."
            )
    return out


def _with_current_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved run config's `moe` and `data` sections with the fields added since it was written at their
    defaults, so a run folder written by an older adamoe still resumes (a field it lacks had its default then)."""
    out = dict(saved)
    try:
        if isinstance(saved.get("moe"), dict):
            out["moe"] = MoEConfig.from_dict(saved["moe"]).to_dict()
        if isinstance(saved.get("data"), dict):
            out["data"] = dataclasses.asdict(DataArgs(**saved["data"]))
    except (TypeError, ValueError):  # a damaged or foreign file: compared as it is, and so refused
        return saved
    return out


def _prepare_output_dir(config: FinetuneConfig) -> Path:
    """`check_run_dir` again (another process may have written meanwhile), then: a new or replaced run starts
    from a folder without the previous run's files; a resumed one loses only what a crashed save left."""
    out = check_run_dir(config)
    if config.resume:
        shutil.rmtree(out / STAGING_DIR, ignore_errors=True)
    elif out.is_dir():
        clear_run_files(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def _run_dir(config: FinetuneConfig, args: AdaMoETrainingArguments) -> Iterator[Path]:
    """The prepared output folder, locked by the process that saves for as long as the run lasts; the other
    ranks wait until it is ready. If that process raises, the others wait in the barrier until the launcher
    stops them, which torchrun does as soon as one worker fails."""
    with contextlib.ExitStack() as stack:
        with args.main_process_first(local=args.save_on_each_node, desc="preparing the output directory"):
            if args.should_save:
                stack.enter_context(RunLock(config.output_dir))
                out = _prepare_output_dir(config)
                # A resumed run's earlier entries are the earlier run's; write_manifest keeps what it recorded.
                before = {p.name for p in out.iterdir() if not owned_by_run(out)(p.name)} if config.resume else set()
                stack.callback(write_manifest, out, before)  # when the run ends, finished or failed
                write_json_atomically(out / RUN_CONFIG_NAME, config.to_dict())
        yield Path(config.output_dir)


def training_arguments(config: FinetuneConfig, task: Task) -> AdaMoETrainingArguments:
    """The run's `AdaMoE(Seq2Seq)TrainingArguments`: adamoe's defaults, then the task's, then the run config's.

    Creating them also joins the process group that a launcher (torchrun, accelerate launch) describes in the
    environment, so `args.process_index`, `args.should_save` and `args.main_process_first()` work from here on.
    """
    args_class = AdaMoESeq2SeqTrainingArguments if task.kind == "seq2seq" else AdaMoETrainingArguments
    try:
        return args_class(
            output_dir=config.output_dir,
            **{**TRAINING_DEFAULTS, **task.training_overrides(config.data), **config.training},
        )
    except ValueError as err:  # transformers' own checks (e.g. bf16 without support, conflicting strategies)
        raise RunConfigError(f"The training settings are inconsistent: {err}") from err


def build_trainer(
    config: FinetuneConfig,
    task: Task,
    model: PreTrainedModel,
    tokenizer: Any,
    *,
    train: bool,
    args: AdaMoETrainingArguments | None = None,
) -> AdaMoETrainer:
    """Data, arguments (unless given) and trainer for `config`; `train=False` loads only the validation split."""
    data = config.data if train else dataclasses.replace(config.data, train_file=None)
    if not train and config.data.validation_file is None and config.data.train_file is not None:
        raise RunConfigError("Evaluating from local files needs --validation-file.")
    args = args if args is not None else training_arguments(config, task)
    # Under a launcher the main process reads and tokenizes first; the others then find the datasets cache filled.
    with args.main_process_first(desc="loading and tokenizing the data"):
        raw = task.load_raw(data)
        if not train:
            raw.pop("train", None)
        prepared = task.preprocess(raw, tokenizer, data, model.config)
    max_tokens = getattr(args, "max_tokens", None)
    if train and max_tokens and prepared.train is not None and len(prepared.train):
        longest = int(sample_lengths(prepared.train).max())  # found now, not when the first epoch is batched
        if longest > max_tokens:
            raise RunConfigError(
                f"training.max_tokens (--max-tokens) is {max_tokens}, but the longest training example has {longest} "
                "tokens: raise --max-tokens, or cut the examples shorter (max_seq_length / max_source_length)."
            )
    if config.data.no_repeat_ngram_size is not None:
        # On the model's generation config, which both generation paths read and the run saves beside the weights:
        # the checkpoint generates as it was evaluated.
        model.generation_config.no_repeat_ngram_size = config.data.no_repeat_ngram_size
    seq2seq = task.kind == "seq2seq"
    trainer_class = AdaMoESeq2SeqTrainer if seq2seq else AdaMoETrainer
    try:
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=prepared.train if train else None,
            eval_dataset=prepared.eval,
            data_collator=task.data_collator(tokenizer, model),
            processing_class=tokenizer,
            compute_metrics=task.compute_metrics(prepared, tokenizer, config.data),
            preprocess_logits_for_metrics=task.preprocess_logits_for_metrics,
        )
    except ValueError as err:  # the trainers' checks of the settings against this model (checkpointing, devices)
        raise RunConfigError(f"The training settings do not fit this model: {err}") from err
    except (RuntimeError, ImportError) as err:  # a --report-to logger whose package is not installed
        if "to be installed" not in str(err):
            raise
        raise RunConfigError(f"The training settings need a package that is not installed: {err}") from err
    except ConnectionError as err:  # push_to_hub creates its Hub repository here; offline that cannot work
        raise RunConfigError(
            f"--push-to-hub needs the Hugging Face Hub, which cannot be reached ({err}). Run without --push-to-hub "
            "and upload the output folder later (huggingface_hub's `hf upload`)."
        ) from err
    trainer.prepared = prepared
    return trainer


def evaluate_and_write_predictions(
    trainer: AdaMoETrainer, task: Task, data: DataArgs, folder: Path
) -> dict[str, float]:
    """The stock evaluation's metrics (`eval_*`), with the task's prediction files written into `folder`.

    `trainer.predict` runs the same loop as `trainer.evaluate` (generation included for seq2seq tasks) and
    also returns the predictions, so the files hold exactly what was scored.
    """
    output = trainer.predict(trainer.eval_dataset, metric_key_prefix="eval")
    files = task.prediction_files(
        EvalPrediction(predictions=output.predictions, label_ids=output.label_ids),
        trainer.prepared,
        trainer.processing_class,
        data,
        model=trainer.accelerator.unwrap_model(trainer.model),
    )
    if trainer.is_world_process_zero():
        for name, text in files.items():
            write_text_atomically(folder / name, text)
    return output.metrics


def task_metrics(task: Task, eval_output: dict[str, float]) -> dict[str, float]:
    """`eval_accuracy` -> `accuracy`, keeping the task's metrics and the evaluation loss."""
    metrics = {k.removeprefix("eval_"): v for k, v in eval_output.items()}
    keep = set(task.metric_names) | {"loss"}
    return {k: float(v) for k, v in metrics.items() if k in keep and v is not None and math.isfinite(float(v))}


def finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune, evaluate and save; returns (and writes to `output_dir/results.json`) the run's results."""
    task = get_task(config.task)
    seed = int(config.training.get("seed", 42))
    set_seed(seed)
    # Everything is checked and loaded before the output folder is touched (with --overwrite: emptied): a wrong
    # folder, --model, data file or setting fails first, and fixing it and running again needs no --overwrite.
    check_run_dir(config)
    model, tokenizer = load_model_and_tokenizer(task, config.model, config.moe)
    if config.moe is None and is_moe_model(model):
        raise RunConfigError(
            f"{config.model} is an adamoe MoE checkpoint; the dense baseline (--gating dense) needs a dense model."
        )
    if config.lora is not None:
        model = with_lora(model, config.lora)
    args = training_arguments(config, task)
    trainer = build_trainer(config, task, model, tokenizer, train=True, args=args)
    if config.resume and not trainer.is_fsdp_enabled:  # the trainer checks too, but after run_config.json is written
        check_resumable_without_fsdp(get_last_checkpoint(config.output_dir))
    if trainer.eval_dataset is None:
        logger.warning(
            "No validation data (--validation-file): the run trains and saves the model but reports no metrics."
        )
    with _run_dir(config, args) as out:
        resume_from = last_usable_checkpoint(str(out)) if config.resume else None
        if config.resume and resume_from is None:
            raise OutputDirError(
                f"--resume: every checkpoint in {out} holds NaN or infinite numbers; start again with --overwrite "
                "and a lower learning rate."
            )
        train_output = trainer.train(resume_from_checkpoint=resume_from)
        trained_steps = train_output.global_step - trainer.resumed_global_step
        if config.resume and trained_steps == 0:
            logger.warning(
                f"Nothing to train: the run in {out} had already finished ({train_output.global_step} steps). "
                "Its model is evaluated again; to train longer, resume with a larger --epochs or --max-steps."
            )
        if config.lora is not None:
            # The adapter alone (for PEFT users), then the merged model, so the folder is an ordinary adamoe
            # checkpoint that evaluate, analyze, export and from_pretrained load as any other.
            trainer.save_model(str(out / LORA_ADAPTER_DIR))
            trainer.model = trainer.model_wrapped = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        trainer.save_model(str(out))
        # The compute the evaluation measured (experts per token, per layer), beside what training measured.
        counter = PairCounter(trainer.model) if is_moe_model(trainer.model) else None
        try:
            eval_output = (
                evaluate_and_write_predictions(trainer, task, config.data, out) if trainer.eval_dataset else {}
            )
        finally:
            if counter is not None:
                counter.close()
        results = _results(config, task, trainer, train_output, eval_output, seed, str(out))
        if counter is not None and counter.tokens:
            results["eval_experts_per_token"] = counter.experts_per_token()
            results["eval_experts_per_token_per_layer"] = counter.experts_per_token_per_layer()
        if trainer.is_world_process_zero():
            write_json_atomically(out / RESULTS_NAME, results)
            # The card's loading snippet names the Hub repository when the run is pushed (as the Hub resolved it).
            hub_id = (getattr(trainer, "hub_model_id", None) or args.hub_model_id) if args.push_to_hub else None
            write_model_card(out, results, task, config.to_dict(), load_from=hub_id)
        if args.push_to_hub:  # `save_model` pushed the weights; this push adds the card and the results
            trainer.push_to_hub(commit_message="adamoe: model card and results", revision=args.hub_revision)
        if args.should_save and not config.keep_checkpoints:
            # The final model is saved; the checkpoints only served to resume an unfinished run.
            for checkpoint in out.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
                shutil.rmtree(checkpoint)
    return results


LORA_ADAPTER_DIR = "adapter"  # where a LoRA run keeps its adapter, beside the merged model


def with_lora(model: PreTrainedModel, lora: dict[str, Any]) -> Any:
    """`model` with LoRA adapters (`adamoe.lora_config`, from the run config's `lora` section): a PeftModel."""
    from peft import get_peft_model

    settings = dict(lora)
    config = lora_config(
        model,
        r=settings.pop("r"),
        alpha=settings.pop("alpha", None),
        targets=settings.pop("targets"),
        train_routers=settings.pop("train_routers", None),
    )
    return get_peft_model(model, config)


def folder_size(folder: str | Path) -> int:
    """Bytes of the files under `folder`."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _results(
    config: FinetuneConfig,
    task: Task,
    trainer: AdaMoETrainer,
    train_output: Any,
    eval_output: dict[str, float],
    seed: int,
    out: str,
) -> dict[str, Any]:
    timing = trainer.timing.summary()
    # The MoE config as the model holds it: fields left to "the model" (a native MoE's expert count) filled in.
    moe = None if config.moe is None else moe_config_of(trainer.accelerator.unwrap_model(trainer.model).config)
    return {
        "task": task.name,
        "model": config.model,
        "gating": config.gating,
        "metrics": task_metrics(task, eval_output),
        "metrics_note": None if trainer.eval_dataset is not None else "no validation data was given",
        "main_metric": task.main_metric,
        "train_time_s": timing["train_time_s"],
        "time_to_target_s": timing["time_to_target_s"],
        "target_loss": timing["target_loss"],
        "tokens_per_second": timing["tokens_per_second"],
        "two_expert_fraction": timing["two_expert_fraction"],
        "two_expert_fraction_per_layer": timing["two_expert_fraction_per_layer"],
        "flops_vs_top2": timing["flops_vs_top2"],
        "train_loss": trainer.run_training_loss(train_output),  # over the whole run, resumed parts included
        "global_steps": train_output.global_step,
        "train_samples": len(trainer.train_dataset) if trainer.train_dataset is not None else 0,
        "eval_samples": len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
        "seed": seed,
        "curriculum": bool(config.training.get("curriculum", False)),
        "moe": None if moe is None else moe.to_dict(),
        "checkpoint": out,
        **provenance(),
    }


def evaluation_trainer(
    task_name: str,
    checkpoint: str,
    *,
    validation_file: str | None = None,
    max_eval_samples: int | None = None,
    data: DataArgs | None = None,
    training: dict[str, Any] | None = None,
    output_dir: Path,
    routing: dict[str, Any] | None = None,
) -> tuple[Task, DataArgs, PreTrainedModel, AdaMoETrainer]:
    """`(task, data, model, trainer)` that evaluate a saved model on the validation split, with the data settings
    of the run that wrote it unless `data` is given (see `evaluate_checkpoint`) and `routing` applied."""
    task = get_task(task_name)
    if data is None:
        data = run_data_args(checkpoint)
    data = dataclasses.replace(
        data,
        train_file=None,
        validation_file=validation_file or data.validation_file,
        max_eval_samples=max_eval_samples or data.max_eval_samples,
    )
    config = FinetuneConfig(
        task=task_name,
        model=checkpoint,
        moe=None,
        data=data,
        training=dict(training or {}),
        output_dir=str(output_dir),
    )
    model, tokenizer = load_model_and_tokenizer(task, checkpoint, None)
    if routing:
        if not is_moe_model(model):
            raise RunConfigError(f"{checkpoint} is a dense model: routing settings need an adamoe checkpoint.")
        set_routing(model, **routing)
    check_routing_state(model)
    return task, data, model, build_trainer(config, task, model, tokenizer, train=False)


def evaluate_checkpoint(
    task_name: str,
    checkpoint: str,
    *,
    validation_file: str | None = None,
    max_eval_samples: int | None = None,
    data: DataArgs | None = None,
    training: dict[str, Any] | None = None,
    output_dir: str | None = None,
    routing: dict[str, Any] | None = None,
) -> dict[str, float]:
    """The task's metrics for a saved model (adamoe or dense) on the validation split.

    Without `data`, the data settings of the run that wrote the checkpoint (its `run_config.json`: sequence
    lengths, SQuAD windows, generation lengths) are used, so the figures match the ones it reported;
    `validation_file` and `max_eval_samples` override them. The prediction files (`Task.prediction_files`) go to
    `output_dir`, by default `<checkpoint>/eval`. `routing` evaluates the same weights with other routing
    settings (`{"gating": "top2"}`, `{"threshold": 0.2}`: see `adamoe.set_routing`).
    """
    out = Path(output_dir) if output_dir is not None else Path(checkpoint) / "eval"
    check_output_dir(out, overwrite=False, resume=False, what="predictions")  # never a folder of the user's files
    task, data, model, trainer = evaluation_trainer(
        task_name, checkpoint, validation_file=validation_file, max_eval_samples=max_eval_samples, data=data,
        training=training, output_dir=out, routing=routing,
    )  # fmt: skip
    metrics = task_metrics(task, evaluate_and_write_predictions(trainer, task, data, out))
    if trainer.is_world_process_zero():
        stored = moe_config_of(model)  # what was evaluated: the routing after `routing` was applied
        evaluated = {"gating": "dense" if stored is None else stored.gating, "moe": stored and stored.to_dict()}
        write_json_atomically(
            out / "eval_results.json", {"task": task_name, "checkpoint": checkpoint, **evaluated, **metrics}
        )
        claim_in_run(out)
    return metrics
