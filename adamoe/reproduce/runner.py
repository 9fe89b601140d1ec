"""`reproduce(table)`: run the table's missing cells, then write its markdown, CSV and plot. Reads top to bottom.

```python
from adamoe.reproduce import reproduce

report = reproduce(3, scale="smoke", output_dir="results")   # all 24 cells of Table 3 on the smoke kit
report.ran, report.skipped, report.markdown                  # what ran now, what was already there, the table
```

Layout under `output_dir/<scale>/`: `cells/<cell id>.json` (one result per experiment file: finetune's
`results.json` with its versions, git commit, hardware and seed, plus the experiment, the resolved run config
and the training-loss curve), `runs/<cell id>/` (the run's checkpoint), and `table<N>.md|csv|png`.

Resumable: a cell whose JSON exists is skipped; a run folder without one (an interrupted run) is run again from
scratch. A cell whose resolved run config equals a finished cell's (Table 5's T = 0.1 is Table 3's adaptive
cell) reuses that result instead of training twice. Each table also runs the cells it normalises to (Table 5
needs Table 3's top-2 cells).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..finetune import finetune
from ..provenance import write_json_atomically
from ..run_config import FinetuneConfig
from .experiments import EXPERIMENTS_DIR, SCALES, TABLES, Experiment, load_experiments
from .normalise import loss_curve
from .smoke import SmokeTask, one_thread, write_smoke_kit
from .tables import write_table

logger = logging.getLogger(__name__)


@dataclass
class ReproduceReport:
    """What one `reproduce` call did and wrote.

    Attributes:
        table: 3, 5 or 6.
        scale: "smoke" or "full".
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
def scale_context(scale: str, root: Path, tasks: list[str]) -> Iterator[dict[str, SmokeTask] | None]:
    """Smoke: the kit under `root/smoke_kit`, on one torch thread. Full: the paper configs as they are."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}.")
    if scale == "full":
        yield None
        return
    with one_thread():
        yield write_smoke_kit(root / "smoke_kit", tasks=tasks)


def resolve(experiment: Experiment, kit: dict[str, SmokeTask] | None, run_dir: Path) -> dict[str, Any]:
    """The cell's run config at its scale, with what every reproduction run records on top."""
    config = experiment.run_config(kit[experiment.task].overlay() if kit is not None else None)
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


def run_cell(experiment: Experiment, root: Path, kit: dict[str, SmokeTask] | None, scale: str) -> str:
    """Train one cell unless its result exists; returns "skipped", "reused" or "ran"."""
    cells_dir = root / "cells"
    result_path = cells_dir / f"{experiment.id}.json"
    if result_path.exists():
        return "skipped"
    config = resolve(experiment, kit, root / "runs" / experiment.id)
    key = _config_key(config)
    for other_id, other in _finished(cells_dir):
        if other.get("run_config_key") == key:
            write_json_atomically(result_path, {**other, "experiment": asdict(experiment), "reused_from": other_id})
            return "reused"
    logger.info("reproduce: running %s", experiment.id)
    # overwrite: a run folder without a result JSON is an interrupted run, which is restarted from scratch.
    results = finetune(FinetuneConfig.from_dict(config, overwrite=True))
    curve, clock = loss_curve(config["output_dir"], results.get("train_time_s"))
    cell = {
        "experiment": asdict(experiment),
        "scale": scale,
        "run_config": {k: v for k, v in config.items() if k != "output_dir"},
        "run_config_key": key,
        "target_loss_smoothing": float(config["training"].get("target_loss_smoothing", 0.9)),
        "loss_curve": curve,
        "loss_curve_clock": clock,
        **results,
    }
    write_json_atomically(result_path, cell)
    return "ran"


def reproduce(
    table: int,
    *,
    tasks: list[str] | None = None,
    scale: str = "smoke",
    output_dir: str | Path = "results",
    experiments_dir: Path = EXPERIMENTS_DIR,
) -> ReproduceReport:
    """Run the missing cells of a paper table and write the table (markdown, CSV, PNG) from all its results.

    Args:
        table: 3 (schemes), 5 (thresholds) or 6 (curriculum).
        tasks: a subset of the six tasks; None runs all of them.
        scale: "smoke" (tiny models on the smoke kit, CPU, minutes) or "full" (the paper configs: Hub and GPU).
        output_dir: results root; results go under `output_dir/<scale>/`.
        experiments_dir: where the experiment files are (the packaged ones by default).
    """
    root = Path(output_dir) / scale
    cells = cell_set(table, tasks, experiments_dir)
    report = ReproduceReport(table=table, scale=scale, root=root)
    with scale_context(scale, root, sorted({e.task for e in cells})) as kit:
        for experiment in cells:
            outcome = run_cell(experiment, root, kit, scale)
            {"ran": report.ran, "skipped": report.skipped, "reused": report.reused}[outcome].append(experiment.id)
    report.outputs = write_table(table, root, cells)
    return report
