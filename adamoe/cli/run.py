"""`adamoe finetune | evaluate | convert | tasks`: flags -> `adamoe.run.recipe` API calls -> a short report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ..run.config import RunConfigError
from ..tasks import TASKS, get_task
from ._errors import friendly_errors
from ._hub import uses_hub
from ._options import (
    AuxLossOpt,
    BatchSizeOpt,
    CombineOpt,
    EntropyLossOpt,
    EveryNOpt,
    ExpertInitOpt,
    Gating,
    GatingOpt,
    MaxEvalOpt,
    ModelOpt,
    NullExpertsOpt,
    NumExpertsOpt,
    OutputDirOpt,
    RuleOpt,
    TargetExpertsOpt,
    TaskName,
    ThresholdOnOpt,
    ThresholdOpt,
    TopKOpt,
    TrainFileOpt,
    ValidationFileOpt,
    moe_config,
    moe_overrides,
)

console = Console()


@friendly_errors
@uses_hub
def finetune_command(
    task: Annotated[
        TaskName | None,
        typer.Option("--task", "-t", help="Which task (see `adamoe tasks`). [required unless --config names it]"),
    ] = None,
    threshold: ThresholdOpt = None,
    rule: RuleOpt = None,
    target_experts: TargetExpertsOpt = None,
    gating: GatingOpt = None,
    num_experts: NumExpertsOpt = None,
    num_null_experts: NullExpertsOpt = None,
    top_k: TopKOpt = None,
    model: ModelOpt = None,
    train_file: TrainFileOpt = None,
    validation_file: ValidationFileOpt = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Run-config YAML (see configs/); flags override it.")
    ] = None,
    output_dir: OutputDirOpt = None,
    epochs: Annotated[float | None, typer.Option(help="Training epochs. [default: the config's, else 3]")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps; overrides --epochs.")] = None,
    batch_size: BatchSizeOpt = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(help="Batch training by tokens (fairseq's --max-tokens), as the paper does for FSMT and BART."),
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Peak learning rate. [default: the config's, else 5e-05]")
    ] = None,
    bf16: Annotated[
        bool | None,
        typer.Option("--bf16/--no-bf16", help="bf16 mixed precision (autocast; the router and combine stay float32)."),
    ] = None,
    gradient_checkpointing: Annotated[
        bool | None,
        typer.Option(
            "--gradient-checkpointing/--no-gradient-checkpointing",
            help="Recompute activations in the backward pass: less memory, more compute (non-reentrant).",
        ),
    ] = None,
    gradient_accumulation_steps: Annotated[
        int | None, typer.Option(help="Micro-batches per optimizer step. [default: 1]")
    ] = None,
    lora_r: Annotated[
        int | None, typer.Option(help="Train LoRA adapters of this rank instead of every weight (needs peft).")
    ] = None,
    lora_alpha: Annotated[float | None, typer.Option(help="LoRA's alpha. [default: 2 * --lora-r]")] = None,
    lora_targets: Annotated[
        str | None,
        typer.Option(
            help="What LoRA adapts, comma-separated: attention, experts, router, module names, or native MoE names "
            "(mlp.experts.gate_up_proj, ...). [default: attention,experts; the routers train with adaptive gating]"
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed. [default: 42]")] = None,
    max_train_samples: Annotated[int | None, typer.Option(help="Use the first N training rows.")] = None,
    max_eval_samples: MaxEvalOpt = None,
    curriculum: Annotated[
        bool | None,
        typer.Option(
            "--curriculum/--no-curriculum",
            help="Routing-aware curriculum (paper §3.2). Default: on for --gating adaptive, off otherwise.",
            show_default=False,
        ),
    ] = None,
    target_loss: Annotated[
        float | None, typer.Option(help="Report the wall-clock time to reach this (smoothed) training loss.")
    ] = None,
    direction: Annotated[str | None, typer.Option(help="wmt19: de-en or en-de.")] = None,
    skip_bad_examples: Annotated[
        bool,
        typer.Option("--skip-bad-examples", help="squad: drop questions whose answer_start is wrong (else an error)."),
    ] = False,
    threshold_on: ThresholdOnOpt = None,
    combine: CombineOpt = None,
    expert_init: ExpertInitOpt = None,
    aux_loss_coef: AuxLossOpt = None,
    entropy_loss_coef: EntropyLossOpt = None,
    every_n_layers: EveryNOpt = None,
    report_to: Annotated[
        str | None,
        typer.Option(
            help="Where the full logs also go: tensorboard, wandb, ... (transformers' report_to). [default: none]"
        ),
    ] = None,
    push_to_hub: Annotated[bool, typer.Option("--push-to-hub", help="Push checkpoints to the Hub.")] = False,
    hub_model_id: Annotated[str | None, typer.Option(help="Hub repository for --push-to-hub.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --output-dir.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run in --output-dir.")] = False,
    keep_checkpoints: Annotated[
        bool,
        typer.Option("--keep-checkpoints", help="Keep the checkpoint-* folders (with optimizer state) after the run."),
    ] = False,
    analyze: Annotated[
        bool,
        typer.Option("--analyze", help="Then write the routing analysis (plots, word report) to OUTPUT_DIR/analysis."),
    ] = False,
) -> None:
    """Fine-tune a model with adaptive-gated MoE FFNs on one task.

    Leaves the model, results.json, run_config.json, a model card (README.md), the logs and the predictions in
    OUTPUT_DIR (the checkpoint-* folders only with --keep-checkpoints).

    Example: adamoe finetune --task sst2 --model bert-base-uncased --threshold 0.1 -o runs/sst2
    """
    from accelerate import PartialState

    from ..run import recipe as recipes
    from ..run.config import FinetuneConfig, flag_overrides

    flags = moe_overrides(
        gating=gating, threshold=threshold, rule=rule, num_experts=num_experts, top_k=top_k, threshold_on=threshold_on,
        combine=combine, expert_init=expert_init, aux_loss_coef=aux_loss_coef, every_n_layers=every_n_layers,
        target_experts=target_experts, entropy_loss_coef=entropy_loss_coef, num_null_experts=num_null_experts,
    )  # fmt: skip
    overrides = flag_overrides(
        {
            "--task": task.value if task is not None else None,
            "--model": model,
            "--output-dir": str(output_dir) if output_dir is not None else None,
            "--keep-checkpoints": keep_checkpoints or None,  # a switch left off is not given
            "--resume": resume or None,
            "--overwrite": overwrite or None,
            "--train-file": str(train_file) if train_file else None,
            "--validation-file": str(validation_file) if validation_file else None,
            "--max-train-samples": max_train_samples,
            "--max-eval-samples": max_eval_samples,
            "--direction": direction,
            "--skip-bad-examples": skip_bad_examples or None,
            "--epochs": epochs,
            "--max-steps": max_steps,
            "--batch-size": batch_size,
            "--max-tokens": max_tokens,
            "--lr": lr,
            "--bf16": bf16,
            "--gradient-checkpointing": gradient_checkpointing,
            "--gradient-accumulation-steps": gradient_accumulation_steps,
            "--lora-r": lora_r,
            "--lora-alpha": lora_alpha,
            "--lora-targets": lora_targets,
            "--seed": seed,
            "--curriculum": curriculum,
            "--target-loss": target_loss,
            "--hub-model-id": hub_model_id,
            "--push-to-hub": push_to_hub or None,
            "--report-to": report_to,
        }
    )
    overrides["moe"] = None if gating is Gating.dense else flags
    run_config = FinetuneConfig.from_sources(config, overrides)
    results = recipes.finetune(run_config)
    if not PartialState().is_main_process:  # under torchrun every rank returns; one report is enough
        return
    _print_results(results)
    out = Path(results["checkpoint"])
    console.print(f"Results: {out / recipes.RESULTS_NAME}")
    console.print(f"Left {_human_size(recipes.folder_size(out))} in {out}")
    if analyze and run_config.moe is not None:
        from ..analysis import analyze as analyze_checkpoint

        report_dir = Path(results["checkpoint"]) / "analysis"
        # The run owns its analysis folder: a resumed run's earlier report is replaced.
        analyze_checkpoint(results["checkpoint"], run_config.task, run_config.data, report_dir, overwrite=True)
        console.print(f"Routing analysis: {report_dir}")


def _human_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _print_results(results: dict[str, Any]) -> None:
    """The metrics, then the training figures the results hold (the time to target only when one was set)."""
    table = Table(title=f"{results['task']} — {results['gating']}", show_header=True)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in results["metrics"].items():
        table.add_row(name, f"{value:.4f}")
    if not results["metrics"]:
        table.add_row("metrics", results.get("metrics_note") or "—")
    rows = (
        ("train time (s)", "train_time_s"),
        ("time to target loss (s)", "time_to_target_s"),
        ("tokens / s", "tokens_per_second"),
        ("two-expert fraction", "two_expert_fraction"),
        ("expert FLOPs vs top-2", "flops_vs_top2"),
    )
    for name, key in rows:
        if key not in results or (key == "time_to_target_s" and results.get("target_loss") is None):
            continue
        value = results[key]
        table.add_row(name, "—" if value is None else f"{value:.4g}")
    console.print(table)


@friendly_errors
@uses_hub
def evaluate_command(
    task: Annotated[TaskName, typer.Option("--task", "-t", help="Which task (see `adamoe tasks`).")],
    checkpoint: Annotated[Path, typer.Option(help="A saved model folder (adamoe or dense).")],
    validation_file: ValidationFileOpt = None,
    max_eval_samples: MaxEvalOpt = None,
    batch_size: BatchSizeOpt = None,
    gating: GatingOpt = None,
    threshold: ThresholdOpt = None,
    rule: RuleOpt = None,
    target_experts: TargetExpertsOpt = None,
    top_k: TopKOpt = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir", "-o", help="Where the predictions and eval_results.json go. [default: CHECKPOINT/eval]"
        ),
    ] = None,
    sweep: Annotated[
        str | None,
        typer.Option(
            help="Evaluate with adaptive gating at each of these comma-separated parameter values instead (T of the "
            "gap rule, p of top_p; --rule picks the rule) and write the quality-against-experts-per-token frontier "
            "to CHECKPOINT/sweep (or --output-dir)."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier sweep report.")] = False,
) -> None:
    """Compute a task's metrics for a saved checkpoint on its validation data (the run's own data settings),
    and write the predictions in the format official scorers read. --gating, --threshold and --top-k evaluate the
    same weights with other routing (the checkpoint's own by default).

    Example: adamoe evaluate --task sst2 --checkpoint runs/sst2-minilm --validation-file dev.tsv
    """
    from accelerate import PartialState

    from ..patching.loading import gating_of
    from ..run import recipe as recipes

    if gating is Gating.dense:
        raise RunConfigError(
            "evaluate --gating dense would evaluate the MoE weights under a dense name: an adamoe checkpoint has no "
            "dense FFNs left. Evaluate the dense model's own folder for the dense baseline, or pick --gating top1, "
            "top2, topk or adaptive to evaluate these weights with other routing."
        )
    training = {"per_device_eval_batch_size": batch_size} if batch_size else {}
    if sweep is not None:
        _sweep(task.value, checkpoint, sweep, rule, validation_file, max_eval_samples, training, output_dir, overwrite)
        return
    out = output_dir if output_dir is not None else checkpoint / "eval"
    metrics = recipes.evaluate_checkpoint(
        task.value,
        str(checkpoint),
        validation_file=str(validation_file) if validation_file else None,
        max_eval_samples=max_eval_samples,
        training=training,
        output_dir=str(out),
        routing=moe_overrides(
            gating=gating, threshold=threshold, rule=rule, num_experts=None, top_k=top_k, target_experts=target_experts
        ),
    )
    if not PartialState().is_main_process:
        return
    gating_shown = gating.value if gating is not None else gating_of(str(checkpoint))
    _print_results({"task": task.value, "gating": gating_shown, "metrics": metrics})
    console.print(f"Predictions: {out}")


def _sweep(task, checkpoint, values, rule, validation_file, max_eval_samples, training, output_dir, overwrite) -> None:
    """`evaluate --sweep`: the frontier of one checkpoint over its rule's parameter (adamoe/run/sweep.py)."""
    from ..run.sweep import sweep_routing

    try:
        parsed = [float(v) for v in values.split(",") if v.strip()]
    except ValueError as err:
        raise RunConfigError(f"--sweep takes comma-separated numbers in [0, 1], got {values!r}.") from err
    rows = sweep_routing(
        task, str(checkpoint), parsed, rule=rule.value if rule else None,
        output_dir=str(output_dir) if output_dir else None, overwrite=overwrite,
        validation_file=str(validation_file) if validation_file else None, max_eval_samples=max_eval_samples,
        training=training,
    )  # fmt: skip
    table = Table(title=f"{task} — {rows[0]['rule']} rule, parameter swept", show_header=True)
    for column in (
        "parameter",
        "experts / token",
        *(k for k in rows[0] if k not in ("rule", "threshold", "experts_per_token")),
    ):
        table.add_column(column, justify="right")
    for row in rows:
        metrics = [f"{v:.4f}" for k, v in row.items() if k not in ("rule", "threshold", "experts_per_token")]
        experts = "—" if row["experts_per_token"] is None else f"{row['experts_per_token']:.3f}"
        table.add_row(f"{row['threshold']:g}", experts, *metrics)
    console.print(table)
    console.print(f"Frontier: {output_dir or checkpoint / 'sweep'}")


@friendly_errors
@uses_hub
def convert_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Hub id or local folder of a dense model.")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where to save the patched checkpoint.")],
    task: Annotated[TaskName | None, typer.Option(help="Build this task's head (else the saved class).")] = None,
    gating: GatingOpt = None,
    threshold: ThresholdOpt = None,
    rule: RuleOpt = None,
    target_experts: TargetExpertsOpt = None,
    num_experts: NumExpertsOpt = None,
    num_null_experts: NullExpertsOpt = None,
    top_k: TopKOpt = None,
    threshold_on: ThresholdOnOpt = None,
    combine: CombineOpt = None,
    expert_init: ExpertInitOpt = None,
    aux_loss_coef: AuxLossOpt = None,
    entropy_loss_coef: EntropyLossOpt = None,
    every_n_layers: EveryNOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the model or run in --output-dir (its own files only).")
    ] = False,
) -> None:
    """Patch a model's FFNs into MoE blocks and save it, without training. Upcycling multiplies the FFN parameters
    by the number of experts: the size is printed before anything is written.

    Example: adamoe convert --model bert-base-uncased --task sst2 --num-experts 8 -o bert-moe
    """
    from ..run import models

    if gating is Gating.dense:
        raise RunConfigError("convert makes an MoE checkpoint; --gating dense would leave it unchanged.")
    moe = moe_config(
        None,
        moe_overrides(
            gating=gating,
            threshold=threshold,
            rule=rule,
            num_experts=num_experts,
            top_k=top_k,
            threshold_on=threshold_on,
            combine=combine,
            expert_init=expert_init,
            aux_loss_coef=aux_loss_coef,
            every_n_layers=every_n_layers,
            target_experts=target_experts,
            entropy_loss_coef=entropy_loss_coef,
            num_null_experts=num_null_experts,
        ),
    )
    head = (
        {} if task is None else {"model_class": get_task(task.value).model_class, **get_task(task.value).model_kwargs}
    )

    def report(patched: Any) -> None:
        from ..patching.loading import moe_config_of

        count = sum(p.numel() for p in patched.parameters())
        stored = moe_config_of(patched.config)
        console.print(
            f"MoE model: {count / 1e6:,.1f} M parameters ({stored.num_experts} experts, top-{stored.top_k}, "
            f"{stored.gating}), {_human_size(2 * count)} in bf16; writing {output_dir}"
        )

    models.convert(model, str(output_dir), moe, overwrite=overwrite, before_writing=report, **head)
    console.print(f"Saved the MoE checkpoint to {output_dir}")


def tasks_command() -> None:
    """List the tasks with their default data, model and metric.

    Example: adamoe tasks
    """
    table = Table(title="adamoe tasks (paper Table 2)")
    for column in ("task", "default data", "default model", "metric", "kind"):
        table.add_column(column)
    for name, task in TASKS.items():
        table.add_row(name, task.default_dataset, task.default_model, task.main_metric, task.kind)
    console.print(table)


@friendly_errors
@uses_hub
def export_command(
    model: Annotated[
        str, typer.Option("--model", "-m", help="An adamoe checkpoint (a run's output folder or Hub id).")
    ],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where to write the native MoE checkpoint.")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the model or run in --output-dir (its own files only).")
    ] = False,
) -> None:
    """Write an adamoe checkpoint in its family's native MoE format, which transformers and serving engines load
    without adamoe: an upcycled Llama or Mistral as Mixtral, an upcycled Qwen3 as Qwen3-MoE, a patched Mixtral,
    Qwen3-MoE or OLMoE as itself. A
    served model runs the format's fixed top-k; adaptive routing at inference needs adamoe.

    Example: adamoe export --model runs/wikitext-smollm2 -o smollm2-moe-mixtral
    """
    from ..run import models

    native = models.export(model, str(output_dir), overwrite=overwrite)
    console.print(
        f"Saved a {type(native).__name__} checkpoint (fixed top-{native.config.num_experts_per_tok}) to {output_dir}"
    )
