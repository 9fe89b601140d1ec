"""`adamoe reproduce`: flags -> `adamoe.reproduce.reproduce` -> the table files."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..run.config import RunConfigError
from ._errors import friendly_errors
from ._hub import uses_hub
from ._options import TaskName

console = Console()


class Table(str, Enum):
    three = "3"
    five = "5"
    six = "6"
    rules = "R"


class Scale(str, Enum):
    smoke = "smoke"
    cpu = "cpu"
    full = "full"


@friendly_errors
@uses_hub
def reproduce_command(
    table: Annotated[
        Table,
        typer.Option(
            "--table",
            help="Paper table: 3 (gating schemes), 5 (thresholds T), 6 (curriculum); R: the routing rules at equal "
            "compute (sst2, wikitext; docs/routing-rules.md).",
        ),
    ],
    tasks: Annotated[
        list[TaskName] | None, typer.Option("--tasks", help="Only these tasks (repeat the flag); default: all six.")
    ] = None,
    scale: Annotated[
        Scale,
        typer.Option(
            help="smoke: tiny models on generated data, CPU, minutes; cpu: the pretrained MiniLM on the real SST-2 "
            "and SQuAD samples (sst2, squad) and SmolLM2 on the decoder tasks' samples, 3 seeds, CPU, hours; full: "
            "the paper configs (Hub, GPU)."
        ),
    ] = Scale.smoke,
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "-o", help="Results root; cells and tables go under OUTPUT_DIR/SCALE/.")
    ] = Path("results"),
    data_root: Annotated[
        Path | None,
        typer.Option(
            "--data-root",
            envvar="ADAMOE_DATA",
            help="--scale cpu: folder with sst2/train.tsv, sst2/validation.tsv and squad/squad_v1.1_sample.json; "
            "default ../shared/data beside the repository.",
        ),
    ] = None,
    keep_models: Annotated[
        bool,
        typer.Option(
            "--keep-models/--drop-models",
            help="Keep each run's final weights under OUTPUT_DIR/SCALE/runs/ (for adamoe analyze and evaluate), or "
            "delete them once the cell's result is written (a SmolLM2 cell is 1.5 GB; the tables need only the "
            "results).",
        ),
    ] = True,
) -> None:
    """Run a paper table's missing cells (finished ones are skipped) and write it as markdown, CSV and PNG.

    Example: adamoe reproduce --table 3 --scale smoke
    """
    from ..reproduce import reproduce

    task_names = [t.value for t in tasks] if tasks else None
    if table is Table.rules:
        from ..reproduce.experiments import RULE_TASKS

        outside = sorted(set(task_names or ()) - set(RULE_TASKS))
        if outside:
            raise RunConfigError(
                f"Table R (the routing rules) covers {', '.join(RULE_TASKS)}; it has no cells for "
                f"{', '.join(outside)}."
            )
        task_names = task_names or list(RULE_TASKS)
    cpu = None
    if scale is Scale.cpu:
        from ..reproduce.cpu_scale import DEFAULT_CPU_TASKS, CpuScale

        cpu = CpuScale.locate(data_root, tasks=task_names or DEFAULT_CPU_TASKS)
    table_id = table.value if table is Table.rules else int(table.value)
    report = reproduce(
        table_id, tasks=task_names, scale=scale.value, output_dir=output_dir, cpu=cpu, keep_models=keep_models
    )
    console.print(
        f"Table {report.table} ({report.scale}): ran {len(report.ran)}, skipped {len(report.skipped)} finished, "
        f"reused {len(report.reused)} identical cell(s)."
    )
    for kind, path in report.outputs.items():
        console.print(f"  {kind}: {path}")


__all__ = ["TaskName", "reproduce_command"]
