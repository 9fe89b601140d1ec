"""The smoke kit: for each of the six tasks a tiny model folder and tiny learnable data files, written offline in
seconds, plus the run-config overlay that trains on them in a few seconds on a CPU.

It is what `adamoe reproduce --scale smoke` runs the paper's tables on, and what CLI end-to-end tests reuse:

```python
from adamoe.smoke import write_smoke_kit

kit = write_smoke_kit("/tmp/kit")                 # {"sst2": SmokeTask, ...}; reused when already written
sst2 = kit["sst2"]
sst2.model_dir, sst2.train_file, sst2.validation_file
sst2.overlay()                                    # {"model": ..., "data": {...}, "training": {...}}
sst2.run_config(output_dir="out")                 # the packaged paper config with the overlay merged in
sst2.cli_args()                                   # ["--task", "sst2", "--model", ..., "--max-steps", "40", ...]
```

`overlay()` is merged over a packaged paper config (`adamoe/configs/<task>.yaml`): it replaces the model, the
data files and the training budget, and leaves the MoE settings (16 experts, gating, threshold, balance loss)
as the paper's. What the data teaches and in which format it is written: see `data.py`; how the models
and tokenizers are built: see `models.py`. `metric_floor` is what a top-2 MoE run of the overlay reaches
comfortably (tests use it as a floor; for perplexity it is a ceiling).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..run.config import deep_merge, packaged_run_config
from ..tasks import TASKS as TASK_REGISTRY
from .data import GENERATORS, corpus
from .models import write_tiny_model

TASK_NAMES = tuple(TASK_REGISTRY)  # the paper's six tasks, in the registry's order
# Bump when generated files change, so a kit written by an older version is rebuilt rather than reused.
KIT_VERSION = 1
MANIFEST = "kit.json"


@dataclass(frozen=True)
class SmokeBudget:
    """How much data a smoke task has and how it trains; all of it ends up in `SmokeTask.overlay()`."""

    train_rows: int
    validation_rows: int
    max_steps: int
    batch_size: int
    learning_rate: float
    metric_floor: float
    data: dict[str, Any] = field(default_factory=dict)


BUDGETS: dict[str, SmokeBudget] = {
    "sst2": SmokeBudget(256, 64, max_steps=40, batch_size=16, learning_rate=3e-3, metric_floor=0.8),
    "squad": SmokeBudget(
        192, 48, max_steps=40, batch_size=16, learning_rate=2e-3, metric_floor=50.0,
        data={"max_seq_length": 64, "doc_stride": 16, "max_answer_length": 4},
    ),
    "wmt19": SmokeBudget(
        384, 32, max_steps=60, batch_size=16, learning_rate=3e-3, metric_floor=30.0,
        data={"max_source_length": 32, "max_target_length": 24, "num_beams": 1},
    ),
    "cnn_dailymail": SmokeBudget(
        192, 24, max_steps=40, batch_size=8, learning_rate=3e-3, metric_floor=35.0,
        data={"max_source_length": 96, "max_target_length": 24, "num_beams": 1},
    ),
    "wikitext": SmokeBudget(
        600, 120, max_steps=30, batch_size=8, learning_rate=3e-3, metric_floor=30.0, data={"block_size": 32}
    ),
    "soda": SmokeBudget(
        192, 32, max_steps=30, batch_size=16, learning_rate=3e-3, metric_floor=25.0, data={"max_seq_length": 48}
    ),
}  # fmt: skip


@dataclass(frozen=True)
class SmokeTask:
    """One task of the kit: where its files are and how to train on them.

    Attributes:
        task: a key of `adamoe.tasks.TASKS`.
        model_dir: tiny randomly initialised model with its tokenizer (`from_pretrained` loads both).
        train_file: training rows in the task's local format.
        validation_file: validation rows, same format.
        budget: sizes, steps, learning rate and metric floor.
    """

    task: str
    model_dir: Path
    train_file: Path
    validation_file: Path
    budget: SmokeBudget

    @property
    def metric_floor(self) -> float:
        return self.budget.metric_floor

    def overlay(self) -> dict[str, Any]:
        """Run-config sections to merge over the packaged paper config: model, data files, training budget."""
        b = self.budget
        return {
            "model": str(self.model_dir),
            "data": {"train_file": str(self.train_file), "validation_file": str(self.validation_file), **b.data},
            "training": {
                "max_steps": b.max_steps,
                "learning_rate": b.learning_rate,
                "per_device_train_batch_size": b.batch_size,
                "max_tokens": None,  # the paper's 4096-token batches would hold the whole tiny training set
                "per_device_eval_batch_size": 32,
                "warmup_steps": 0,  # the paper configs' warm-up (up to 1000 steps) would swallow the whole run
                "lr_scheduler_type": "linear",
                "weight_decay": 0.0,
                "label_smoothing_factor": 0.0,
                "logging_steps": 2,
                "save_strategy": "steps",  # one checkpoint, at the last step
                "save_steps": b.max_steps,
                "save_total_limit": 1,
                "disable_tqdm": True,
                "dataloader_pin_memory": False,  # tiny batches: pinning buys nothing and warns on CPU
            },
        }

    def run_config(self, **top_level: Any) -> dict[str, Any]:
        """The packaged paper config of the task with `overlay()` merged over it, plus top-level keys
        (`output_dir=...`, `moe=None` for the dense baseline); `FinetuneConfig.from_dict` takes it as is."""
        return {**deep_merge(packaged_run_config(self.task), self.overlay()), **top_level}

    def cli_args(self) -> list[str]:
        """`adamoe finetune` flags for the same run (the flags the CLI has; the rest keep their defaults)."""
        b = self.budget
        return [
            "--task", self.task, "--model", str(self.model_dir),
            "--train-file", str(self.train_file), "--validation-file", str(self.validation_file),
            "--max-steps", str(b.max_steps), "--lr", str(b.learning_rate), "--batch-size", str(b.batch_size),
        ]  # fmt: skip


def write_smoke_task(task: str, folder: str | Path, seed: int = 0) -> SmokeTask:
    """Write one task's data files and tiny model under `folder` (overwriting) and describe them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    make_rows, write, suffix = GENERATORS[task]
    budget = BUDGETS[task]
    # Disjoint streams: the validation rows are drawn from another generator, never copies of training rows
    # by construction of the seed (they may coincide by chance, as templated sentences can).
    train_rows = make_rows(random.Random(f"{seed}-{task}-train"), budget.train_rows)
    validation_rows = make_rows(random.Random(f"{seed}-{task}-validation"), budget.validation_rows)
    train_file, validation_file = folder / f"train{suffix}", folder / f"validation{suffix}"
    write(train_file, train_rows)
    write(validation_file, validation_rows)
    model_dir = write_tiny_model(task, list(corpus(task, train_rows + validation_rows)), folder / "model", seed)
    return SmokeTask(task, model_dir, train_file, validation_file, budget)


def write_smoke_kit(
    root: str | Path, tasks: tuple[str, ...] | list[str] = TASK_NAMES, seed: int = 0
) -> dict[str, SmokeTask]:
    """Write (or reuse) the smoke kit under `root`: one folder per task with `model/`, `train.*`, `validation.*`.

    A task already written by this kit version with the same seed is reused, so repeated calls cost nothing.

    Example:
        ```python
        >>> kit = write_smoke_kit(tmp_path, tasks=["sst2"])
        >>> finetune(FinetuneConfig.from_dict(kit["sst2"].run_config(output_dir=str(tmp_path / "run"))))
        ```
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if manifest.get("kit_version") != KIT_VERSION or manifest.get("seed") != seed:
        manifest = {"kit_version": KIT_VERSION, "seed": seed, "tasks": {}}
    kit = {}
    for task in tasks:
        if task not in BUDGETS:
            raise KeyError(f"No smoke kit for task {task!r}; available: {', '.join(TASK_NAMES)}.")
        entry = manifest["tasks"].get(task)
        if entry is not None and all(Path(entry[k]).exists() for k in ("model_dir", "train_file", "validation_file")):
            kit[task] = SmokeTask(
                task,
                Path(entry["model_dir"]),
                Path(entry["train_file"]),
                Path(entry["validation_file"]),
                BUDGETS[task],
            )
            continue
        kit[task] = write_smoke_task(task, root / task, seed)
        manifest["tasks"][task] = {
            "model_dir": str(kit[task].model_dir),
            "train_file": str(kit[task].train_file),
            "validation_file": str(kit[task].validation_file),
            "budget": asdict(BUDGETS[task]),
        }
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return kit


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the previous count.

    The kit's models are so small that every op is a few microseconds of work; with two or more threads on a
    shared CPU each op also waits for the other threads to be scheduled, which made smoke runs ~10x slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
