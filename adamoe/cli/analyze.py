"""`adamoe analyze`: flags -> `adamoe.analysis.analyze` -> the routing report of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ._errors import friendly_errors
from ._hub import uses_hub
from ._options import BatchSizeOpt, MaxEvalOpt, TaskOpt, ValidationFileOpt

console = Console()


@friendly_errors
@uses_hub
def analyze_command(
    checkpoint: Annotated[Path, typer.Option(help="A trained adamoe checkpoint folder (with its tokenizer).")],
    task: TaskOpt,
    validation_file: ValidationFileOpt = None,
    max_eval_samples: MaxEvalOpt = None,
    batch_size: BatchSizeOpt = None,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", "-o", help="Where the report goes; default CHECKPOINT/analysis.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier report in the folder.")] = False,
) -> None:
    """Routing analysis of a checkpoint on validation data: gate confidence, per-layer two-expert share, top words.

    Data settings (lengths, the validation file) default to those the checkpoint was trained with.

    Example: adamoe analyze --task sst2 --checkpoint runs/sst2
    """
    from ..analysis import analyze, checkpoint_data

    data = checkpoint_data(
        checkpoint,
        validation_file=str(validation_file) if validation_file else None,
        max_eval_samples=max_eval_samples,
    )
    report = analyze(
        str(checkpoint),
        task.value,
        data,
        output_dir or checkpoint / "analysis",
        batch_size=batch_size or 16,
        overwrite=overwrite,
    )
    console.print(f"Two-expert fraction: {report.two_expert_fraction:.3f} over {report.num_tokens} token-layers")
    for kind, path in report.outputs.items():
        console.print(f"  {kind}: {path}")
