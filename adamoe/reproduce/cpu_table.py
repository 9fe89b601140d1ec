"""What the tables add at the cpu scale (several seeds): figures as mean ± standard deviation over the seeds, a
normalised CPU-time column beside the wall-clock one, and an appendix with every cell's timing and the load.

The rows of each seed are computed by `tables.py` exactly as at one seed; `aggregate_rows` folds them into
one row per cell, keeping each figure's mean under its own key, its sample standard deviation under
`<key>_sd` and the number of seeds that have it under `<key>_n`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from .cpu_scale import SETTINGS

Row = dict[str, Any]
# Figures measured per seed; everything else in a row (labels, the paper's numbers) is the same in every seed.
MEASURED = (
    "metric",
    "norm_time",
    "norm_cpu_time",
    "flops_vs_top2",
    "two_expert_fraction",
    "target_loss",
    "metric_with_curriculum",
    "metric_without_curriculum",
    "metric_delta",
    "time_inflation",
    "cpu_time_inflation",
    "experts_per_token",
    "train_experts_per_token",
    "layer_min",
    "layer_max",
)


def aggregate_rows(per_seed: Sequence[list[Row]]) -> list[Row]:
    """One row per cell from each seed's rows (same cells, same order): mean, `_sd` and `_n` per measured figure,
    and `seeds`, the number of seeds.

    Example:
        ```python
        >>> aggregate_rows([[{"cell": "a", "metric": 0.8}], [{"cell": "a", "metric": 0.9}]])[0]["metric_sd"]
        0.0707...
        ```
    """
    rows = []
    for seed_rows in zip(*per_seed, strict=True):
        row = {**seed_rows[0], "seeds": len(seed_rows)}
        for key in MEASURED:
            if key not in row:
                continue
            values = [r[key] for r in seed_rows if r.get(key) is not None]
            row[key] = statistics.fmean(values) if values else None
            row[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else None
            row[f"{key}_n"] = len(values)
        rows.append(row)
    return rows


def cpu_columns(table: int, columns: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The table's columns at cpu scale: the wall-clock time column named as such, the CPU-time one beside it."""
    out = []
    for key, header, kind in columns:
        if key == "norm_time":
            out += [("norm_cpu_time", "Norm. CPU time", kind), ("norm_time", "Norm. wall time", kind)]
        elif key == "time_inflation":
            out += [
                ("cpu_time_inflation", "CPU-time inflation without curriculum", kind),
                ("time_inflation", "Wall-time inflation", kind),
            ]
        else:
            out.append((key, header, kind))
    return out


def cpu_scale_note(seeds: Sequence[int], tasks: Sequence[str] = ("sst2", "squad")) -> str:
    """What the cpu scale trained, for the tables' header: MiniLM for the BERT rows, SmolLM2 for the decoder rows."""
    minilm = (
        "the pretrained all-MiniLM-L6-v2 (6 layers, hidden 384) with every FFN upcycled into 16 experts, "
        f"fine-tuned on the real SST-2 sample ({SETTINGS['sst2'].max_train_samples:,} training sentences, 500 to "
        "evaluate) and the SQuAD v1.1 sample split by article (three train, the fourth evaluates)"
    )
    decoders = [t for t in tasks if SETTINGS[t].model == "smollm2"]
    if not decoders:
        what, parts = "a 6-layer model (NOT the paper's BERT-base)", [minilm]
        seeds_text = f"over {len(seeds)} seeds ({', '.join(str(s) for s in seeds)})"
    else:
        steps = "/".join(str(s) for s in sorted({SETTINGS[t].max_steps for t in decoders}))
        smollm2 = (
            "the pretrained Llama SmolLM2-135M-Instruct (30 layers, hidden 576) with every FFN upcycled into 4 "
            f"experts, fine-tuned for {steps} steps on the shared {', '.join(decoders)} samples, the generation tasks "
            "in their decoder-only prompt form"
        )
        what = "small models (NOT the paper's BERT-base, GPT-2, DialoGPT, FSMT or BART)"
        parts = ([minilm] if set(tasks) - set(decoders) else []) + [smollm2]
        seeds_text = f"over the seeds run ({', '.join(str(s) for s in seeds)}; some rows run fewer for the budget)"
    return (
        f"**CPU scale on real weights, {what}**: {'; and '.join(parts)}, on one torch thread of a shared 2-core "
        f"CPU, for short budgets (`adamoe/reproduce/cpu_scale.py`). Every figure is the mean ± standard deviation "
        f"{seeds_text}; a figure from fewer seeds says (n=...)."
    )


def time_note(table: int) -> str:
    reference = "the task's Top-2 cell" if table in (3, 5, "R") else "the with-curriculum cell"
    return (
        f"Time: time to the task's target training loss over {reference}'s, per seed (Table 6: that ratio minus 1), "
        "then mean ± sd over the seeds. **The CPU-time column is the one to read**: on a shared machine a "
        "single-threaded process's CPU time does not count the time it waited for a core, so it varies far less "
        "between identical runs than the wall clock (10-30% here). It is read from the process CPU seconds the "
        "trainer stamps on every logging event (`train_cpu_s`, evaluation excluded); for cells run before the "
        "trainer stamped them it is estimated as the wall clock to the target times the cell's CPU / wall share. "
        "The wall-clock ratio is shown beside it and the appendix gives each cell's share and load."
    )


def timing_appendix(results_by_seed: dict[int, dict[str, dict[str, Any] | None]]) -> list[str]:
    """Markdown lines: every run's wall clock, process CPU time, their ratio, torch threads and load average."""
    lines = [
        "## Timing of every run",
        "",
        "Wall clock and process CPU time of the whole `finetune` call (loading, training, evaluation); training "
        "alone is `train_time_s` in the cell JSON. Load: the machine's 1-minute load average before and after.",
        "",
        "| Cell | Seed | Wall s | CPU s | CPU / wall | Train s | Threads | Load before | Load after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    loads = []
    for seed, results in results_by_seed.items():
        for cell_id, cell in results.items():
            if cell is None:
                lines.append(f"| {cell_id} | {seed} | — | — | — | — | — | — | — |")
                continue
            wall, cpu = cell.get("wall_s"), cell.get("process_cpu_s")
            load = cell.get("load_average_1min") or {}
            loads += [v for v in (load.get("before"), load.get("after")) if v is not None]
            name = cell_id + (f" (= {cell['reused_from']})" if cell.get("reused_from") else "")
            lines.append(
                f"| {name} | {seed} | {_num(wall, '.0f')} | {_num(cpu, '.0f')} | "
                f"{_num(cpu / wall if cpu is not None and wall else None, '.2f')} | "
                f"{_num(cell.get('train_time_s'), '.0f')} | {cell.get('torch_threads', '—')} | "
                f"{_num(load.get('before'), '.2f')} | {_num(load.get('after'), '.2f')} |"
            )
    summary = f"1-minute load average over the runs: {min(loads):.2f} to {max(loads):.2f}." if loads else ""
    return [*lines, "", summary] if summary else lines


def _num(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)
