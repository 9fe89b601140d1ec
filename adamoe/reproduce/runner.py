"""`reproduce(table)`: run the table's missing cells, then write its markdown, CSV and plot. Reads top to bottom.

```python
from adamoe.reproduce import reproduce

report = reproduce(3, scale="smoke", output_dir="results")   # all 24 cells of Table 3 on the smoke kit
report.ran, report.skipped, report.markdown                  # what ran now, what was already there, the table
```

Layout under `output_dir/<scale>/`: `cells/<cell id>.json` (one result per experiment file: finetune's
`results.json` with its versions, git commit, hardware and seed, plus the experiment, the resolved run config
and the training-loss curve), `runs/<cell id>/` (the run's checkpoint; with `keep_models=False` its logs, results
and predictions without the weights), and `table<N>.md|csv|png`.

Scales: "smoke" (the kit, one seed), "full" (the paper configs as they are, one seed) and "cpu" (the pretrained
MiniLM on the real SST-2 and SQuAD samples, `cpu_scale.py`): there every cell runs once per seed, as
`cells/<cell id>-seed<seed>.json` and `runs/<cell id>-seed<seed>/`, and the tables show mean ± standard deviation.
Every cell records its process CPU time (`time.process_time()`, all threads of the process) beside the wall
clock of the same span (loading, training and evaluation), the 1-minute load average before and after, and the
number of torch threads; smoke and cpu cells run on one torch thread.

Resumable: a cell whose JSON exists is skipped; a run folder without one (an interrupted run) is run again from
scratch. A cell whose resolved run config equals a finished cell's (Table 5's T = 0.1 is Table 3's adaptive
cell) reuses that result instead of training twice. Each table also runs the cells it normalises to (Table 5
needs Table 3's top-2 cells).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..files import write_json_atomically
from ..run.config import FinetuneConfig
from ..run.output_dir import check_report_dir
from ..run.recipe import finetune
from ..smoke import SmokeTask, one_thread, write_smoke_kit
from .cpu_scale import DEFAULT_CPU_TASKS, SEEDS, CpuScale, CpuTask
from .experiments import EXPERIMENTS_DIR, SCALES, TABLES, Experiment, load_experiments
from .normalise import loss_curve
from .tables import write_table

logger = logging.getLogger(__name__)
Kit = dict[str, SmokeTask] | dict[str, CpuTask]


@dataclass
class ReproduceReport:
    """What one `reproduce` call did and wrote.

    Attributes:
        table: 3, 5 or 6.
        scale: "smoke", "cpu" or "full".
        root: `output_dir/<scale>`.
        ran: ids of the cells trained by this call.
        skipped: ids of the cells whose results already existed.
        reused: ids of the cells that took the result of a finished cell with the same run config.
        outputs: the table files written (`markdown`, `csv`, `plot`).
    """

    table: int
    scale: str
    root: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def markdown(self) -> Path:
        return self.outputs["markdown"]


def cell_set(table: int, tasks: list[str] | None, experiments_dir: Path = EXPERIMENTS_DIR) -> list[Experiment]:
    """The table's cells for `tasks`, preceded by the reference cells they are normalised to."""
    if table not in TABLES:
        raise ValueError(f"The paper's reproducible tables are {TABLES}; got {table}.")
    cells = load_experiments(experiments_dir, table=table, tasks=tasks)
    by_id = {e.id: e for e in load_experiments(experiments_dir)}
    missing = sorted({e.reference for e in cells} - set(by_id))
    if missing:
        raise FileNotFoundError(f"Reference cell(s) {missing} have no experiment file in {experiments_dir}.")
    references = [by_id[r] for r in dict.fromkeys(e.reference for e in cells)]
    return references + [e for e in cells if e.id not in {r.id for r in references}]


@contextlib.contextmanager
def scale_context(scale: str, root: Path, tasks: list[str], cpu: CpuScale | None = None) -> Iterator[Kit | None]:
    """Smoke: the kit under `root/smoke_kit`, on one torch thread. Cpu: MiniLM and the real samples (`cpu`, by
    default `CpuScale.locate()`), on one torch thread. Full: the paper configs as they are."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}.")
    if scale == "full":
        yield None
        return
    if scale == "cpu":
        cpu = cpu or CpuScale.locate(tasks=tasks)
        with one_thread():
            yield cpu.prepare(root, tasks)
        return
    with one_thread():
        yield write_smoke_kit(root / "smoke_kit", tasks=tasks)


def scale_seeds(scale: str, cpu: CpuScale | None = None) -> tuple[int | None, ...]:
    """The seeds every cell runs with: the cpu scale's, else one run with the config's own seed (None)."""
    if scale != "cpu":
        return (None,)
    return cpu.seeds if cpu is not None else SEEDS


def cell_name(experiment: Experiment, seed: int | None = None) -> str:
    """The result file's stem: the cell id, with `-seed<seed>` when the scale runs several seeds."""
    return experiment.id if seed is None else f"{experiment.id}-seed{seed}"


def resolve(experiment: Experiment, kit: Kit | None, run_dir: Path, seed: int | None = None) -> dict[str, Any]:
    """The cell's run config at its scale (and seed), with what every reproduction run records on top."""
    config = experiment.run_config(kit[experiment.task].overlay() if kit is not None else None)
    if seed is not None:
        config["training"]["seed"] = seed
    # Stamp each training log with the wall clock since training began ("train_runtime"), so the time to the
    # common target loss is measured, not interpolated (see normalise.py).
    config["training"]["include_num_input_tokens_seen"] = "non_padding"
    config["output_dir"] = str(run_dir)
    return config


def _config_key(config: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if k != "output_dir"}, sort_keys=True, default=str)


def _finished(cells_dir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(cells_dir.glob("*.json")):
        yield path.stem, json.loads(path.read_text())


def run_cell(
    experiment: Experiment,
    root: Path,
    kit: Kit | None,
    scale: str,
    seed: int | None = None,
    *,
    keep_models: bool = True,
) -> str:
    """Train one cell (at one seed) unless its result exists; returns "skipped", "reused" or "ran".

    With `keep_models=False` the run's weights are deleted once its result is written (`drop_weights`).
    """
    cells_dir = root / "cells"
    name = cell_name(experiment, seed)
    result_path = cells_dir / f"{name}.json"
    if result_path.exists():
        return "skipped"
    config = resolve(experiment, kit, root / "runs" / name, seed)
    key = _config_key(config)
    for other_id, other in _finished(cells_dir):
        if other.get("run_config_key") == key:
            write_json_atomically(result_path, {**other, "experiment": asdict(experiment), "reused_from": other_id})
            return "reused"
    logger.info("reproduce: running %s", name)
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    # overwrite: a run folder without a result JSON is an interrupted run, which is restarted from scratch.
    results = finetune(FinetuneConfig.from_dict(config, overwrite=True))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    curve, clock = loss_curve(config["output_dir"], results.get("train_time_s"))
    cell = {
        "experiment": asdict(experiment),
        "scale": scale,
        # The whole finetune call (load, train, evaluate): the process's CPU seconds beside the wall clock.
        "process_cpu_s": cpu,
        "wall_s": wall,
        "torch_threads": _torch_threads(),
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "run_config": {k: v for k, v in config.items() if k != "output_dir"},
        "run_config_key": key,
        "target_loss_smoothing": float(config["training"].get("target_loss_smoothing", 0.9)),
        "loss_curve": curve,
        "loss_curve_clock": clock,
        **results,
    }
    write_json_atomically(result_path, cell)
    if not keep_models:
        drop_weights(Path(config["output_dir"]))
    return "ran"


# A run folder's weights (model and checkpoints), as Path.glob patterns; everything else in it is kilobytes.
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "checkpoint-*")


def drop_weights(run_dir: Path) -> None:
    """Delete a finished run's weights, keeping its logs, results, predictions and model card.

    Why: a cell's result JSON holds every figure the tables read, and at the decoder rows each run's model is
    1.5 GB (SmolLM2 with 4 experts in every feed-forward block): a table's 30-odd runs fill a disk.
    """
    for pattern in WEIGHT_PATTERNS:
        for path in run_dir.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# What reproduction writes under `output_dir/<scale>/` (check_report_dir).
RESULT_ENTRIES = ("cells", "runs", "data", "smoke_kit", "table*.md", "table*.csv", "table*.png")


def reproduce(
    table: int,
    *,
    tasks: list[str] | None = None,
    scale: str = "smoke",
    output_dir: str | Path = "results",
    experiments_dir: Path = EXPERIMENTS_DIR,
    cpu: CpuScale | None = None,
    keep_models: bool = True,
) -> ReproduceReport:
    """Run the missing cells of a paper table and write the table (markdown, CSV, PNG) from all its results.

    Args:
        table: 3 (schemes), 5 (thresholds) or 6 (curriculum).
        tasks: a subset of the six tasks; None runs all of them.
        scale: "smoke" (tiny models on the smoke kit, CPU, minutes), "cpu" (pretrained MiniLM on the real SST-2
            and SQuAD samples, three seeds, CPU, hours; `cpu_scale.py`) or "full" (the paper configs: Hub and GPU).
        output_dir: results root; results go under `output_dir/<scale>/`.
        experiments_dir: where the experiment files are (the packaged ones by default).
        cpu: the cpu scale's model, data and seeds; None: `CpuScale.locate()` (cpu scale only).
        keep_models: keep each run's final weights under `runs/` (for `adamoe analyze`, `evaluate --sweep`);
            False deletes them once the cell's result is written.
    """
    root = Path(output_dir) / scale
    # A results root holds only what reproduction writes; its own cells are resumed, never replaced.
    check_report_dir(root, RESULT_ENTRIES, overwrite=True, flag="--output-dir")
    if scale == "cpu" and not tasks:
        tasks = list(DEFAULT_CPU_TASKS)
    cells = cell_set(table, tasks, experiments_dir)
    report = ReproduceReport(table=table, scale=scale, root=root)
    task_names = sorted({e.task for e in cells})
    if scale == "cpu" and cpu is None:
        cpu = CpuScale.locate(tasks=task_names)  # before anything is written: a missing model or file fails first
    seeds = scale_seeds(scale, cpu)
    with scale_context(scale, root, task_names, cpu) as kit:
        # Seed-major: each seed's cells of a task run back to back, so a slow spell of the machine hits one seed's
        # comparison rather than one scheme in every seed.
        for seed in seeds:
            for experiment in cells:
                if cpu is not None and not cpu.runs(experiment.task, experiment.scheme, seed):
                    continue  # a cell this scale leaves out for its budget (cpu_scale.SETTINGS)
                outcome = run_cell(experiment, root, kit, scale, seed, keep_models=keep_models)
                bucket = {"ran": report.ran, "skipped": report.skipped, "reused": report.reused}[outcome]
                bucket.append(cell_name(experiment, seed))
    report.outputs = write_table(table, root, cells, seeds=None if seeds == (None,) else seeds)
    return report
