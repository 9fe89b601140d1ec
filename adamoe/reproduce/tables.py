"""Tables 3, 5 and 6 generated from the cell results, with the paper's numbers side by side; never typed.

`write_table(table, root, cells)` reads `root/cells/<id>.json` for every experiment in `cells`, computes the
normalised training times (`normalise.py`), and writes `root/table<N>.md`, `.csv` and `.png`. The paper's
numbers come from `adamoe/data/paper_results.json` (with their source); a ratio the paper does not print
(e.g. FLOPs relative to top-2) is computed here from its printed values.

With `seeds` (the cpu scale), each seed's rows are computed on its own (`cells/<id>-seed<seed>.json`: every
seed's cells normalised to the same seed's reference), then each figure is the mean ± standard deviation over
the seeds, and the table gains a normalised CPU-time column and a per-cell timing appendix (`cpu_table.py`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from ..tasks import get_task
from .cpu_table import aggregate_rows, cpu_columns, cpu_scale_note, time_note, timing_appendix
from .experiments import (
    PAPER_THRESHOLD,
    RULE_LABELS,
    RULE_TABLE,
    SCHEME_LABELS,
    TASKS,
    Experiment,
    expected_experiments,
    rule_of,
)
from .normalise import normalised_times
from .plots import plot_metric_vs_time, plot_rule_frontier

PAPER_RESULTS = Path(__file__).resolve().parents[1] / "data" / "paper_results.json"
SHORT_LABELS = {"dense": "dense", "top2": "top-2", "top1": "top-1", "adaptive": "adaptive"}
DENSE_FLOPS_VS_TOP2 = 0.5  # a dense FFN runs once per token: the expert FLOPs of top-1, half of top-2's
Row = dict[str, Any]


@cache
def paper_results() -> dict[str, Any]:
    """The paper's Tables 3, 5 and 6 and stated two-expert fractions, with their source (see the JSON file)."""
    return json.loads(PAPER_RESULTS.read_text())


def load_cells(root: Path, cells: Sequence[Experiment], seed: int | None = None) -> dict[str, dict[str, Any] | None]:
    """Each experiment's result JSON under `root/cells` (at `seed`, when given), or None for a cell not run."""
    out = {}
    for experiment in cells:
        name = experiment.id if seed is None else f"{experiment.id}-seed{seed}"
        path = root / "cells" / f"{name}.json"
        out[experiment.id] = json.loads(path.read_text()) if path.exists() else None
    return out


def _metric(cell: dict[str, Any] | None, task: str) -> float | None:
    return None if cell is None else cell["metrics"].get(get_task(task).main_metric)


def _timing(results: dict[str, dict[str, Any] | None], ids: Sequence[str], reference: str) -> dict[str, Any]:
    """Normalised times of the cells `ids` of one task against `reference`, over the curves that exist.

    Also `normalised_cpu`: the same over process CPU time to the target, read from the CPU seconds the trainer
    stamps on each logging event (`cpu_s`) when every curve has them; for cells run before the trainer stamped
    them, estimated as the wall clock to the target times the cell's process CPU / wall share. A cell with
    neither has None there. `cpu_clock` says which ("measured" or "estimated").
    """
    curves = {i: results[i]["loss_curve"] for i in ids if results.get(i) and results[i].get("loss_curve")}
    smoothing = next((results[i]["target_loss_smoothing"] for i in ids if results.get(i)), 0.9)
    timing = normalised_times(curves, reference, smoothing)
    if curves and all("cpu_s" in p for c in curves.values() for p in c):
        timing["normalised_cpu"] = normalised_times(curves, reference, smoothing, clock="cpu_s")["normalised"]
        timing["cpu_clock"] = "measured"
        return timing
    shares = {i: _cpu_share(results[i]) for i in curves}
    cpu_times = {
        i: None if t is None or shares[i] is None else t * shares[i] for i, t in timing["time_to_target_s"].items()
    }
    reference_cpu = cpu_times.get(reference)
    timing["normalised_cpu"] = {
        i: (t / reference_cpu if t is not None and reference_cpu else None) for i, t in cpu_times.items()
    }
    timing["cpu_clock"] = "estimated"
    return timing


def _cpu_share(cell: dict[str, Any]) -> float | None:
    cpu, wall = cell.get("process_cpu_s"), cell.get("wall_s")
    return cpu / wall if cpu is not None and wall else None


def _paper_row(table: str, **match: Any) -> dict[str, Any]:
    return next((r for r in paper_results()[table] if all(r.get(k) == v for k, v in match.items())), {})


def table3_rows(cells: Sequence[Experiment], results: dict[str, dict[str, Any] | None]) -> list[Row]:
    rows = []
    for task in [t for t in TASKS if any(e.task == t and e.table == 3 for e in cells)]:
        task_cells = [e for e in cells if e.task == task and e.table == 3]
        timing = _timing(results, [e.id for e in task_cells], task_cells[0].reference)
        paper_top2 = _paper_row("table3", task=task, scheme="top2").get("flops_per_token")
        for e in task_cells:
            cell, paper = results.get(e.id), _paper_row("table3", task=task, scheme=e.scheme)
            flops = None if cell is None else cell.get("flops_vs_top2")
            rows.append(
                {
                    "task": task,
                    "metric_name": get_task(task).main_metric,
                    "label": SCHEME_LABELS[e.scheme] + (f" (T={e.threshold})" if e.threshold is not None else ""),
                    "short_label": SHORT_LABELS[e.scheme],
                    "cell": e.id,
                    "metric": _metric(cell, task),
                    "paper_metric": paper.get("metric"),
                    "norm_time": timing["normalised"].get(e.id),
                    "norm_cpu_time": timing["normalised_cpu"].get(e.id),
                    "paper_norm_time": paper.get("norm_training_time"),
                    "flops_vs_top2": DENSE_FLOPS_VS_TOP2 if cell is not None and e.scheme == "dense" else flops,
                    "paper_flops_vs_top2": (
                        paper["flops_per_token"] / paper_top2 if paper.get("flops_per_token") and paper_top2 else None
                    ),
                    "two_expert_fraction": None if cell is None else cell.get("two_expert_fraction"),
                    "paper_two_expert_fraction": (
                        paper_results()["two_expert_fraction"].get(task) if e.scheme == "adaptive" else None
                    ),
                    "target_loss": timing["target_loss"],
                }
            )
    return rows


def table5_rows(cells: Sequence[Experiment], results: dict[str, dict[str, Any] | None]) -> list[Row]:
    rows = []
    for task in [t for t in TASKS if any(e.task == t and e.table == 5 for e in cells)]:
        task_cells = [e for e in cells if e.task == task and e.table == 5]
        reference = task_cells[0].reference
        timing = _timing(results, [reference] + [e.id for e in task_cells], reference)
        for e in task_cells:
            cell = results.get(e.id)
            paper = _paper_row("table5", task=task, threshold=e.threshold)
            if e.threshold == PAPER_THRESHOLD:  # printed in Table 3, not Table 5
                table3 = _paper_row("table3", task=task, scheme="adaptive")
                paper = {"metric": table3.get("metric"), "norm_training_time": table3.get("norm_training_time")}
            rows.append(
                {
                    "task": task,
                    "metric_name": get_task(task).main_metric,
                    "label": f"T={e.threshold}",
                    "short_label": f"T={e.threshold}",
                    "cell": e.id,
                    "metric": _metric(cell, task),
                    "paper_metric": paper.get("metric"),
                    "norm_time": timing["normalised"].get(e.id),
                    "norm_cpu_time": timing["normalised_cpu"].get(e.id),
                    "paper_norm_time": paper.get("norm_training_time"),
                    "flops_vs_top2": None if cell is None else cell.get("flops_vs_top2"),
                    "two_expert_fraction": None if cell is None else cell.get("two_expert_fraction"),
                    "target_loss": timing["target_loss"],
                }
            )
    return rows


def table6_rows(cells: Sequence[Experiment], results: dict[str, dict[str, Any] | None]) -> list[Row]:
    rows = []
    for task in [t for t in TASKS if any(e.task == t and e.table == 6 for e in cells)]:
        by_curriculum = {e.curriculum: e for e in cells if e.task == task and e.table == 6}
        with_id, without_id = by_curriculum[True].id, by_curriculum[False].id
        timing = _timing(results, [with_id, without_id], with_id)
        with_metric, without_metric = _metric(results.get(with_id), task), _metric(results.get(without_id), task)
        ratio, cpu_ratio = timing["normalised"].get(without_id), timing["normalised_cpu"].get(without_id)
        paper = _paper_row("table6", task=task)
        rows.append(
            {
                "task": task,
                "metric_name": get_task(task).main_metric,
                "cell": without_id,
                "metric_with_curriculum": with_metric,
                "metric_without_curriculum": without_metric,
                "metric_delta": None if None in (with_metric, without_metric) else without_metric - with_metric,
                "paper_metric_delta": paper.get("metric_delta"),
                "time_inflation": None if ratio is None else ratio - 1.0,
                "cpu_time_inflation": None if cpu_ratio is None else cpu_ratio - 1.0,
                "paper_time_inflation": paper.get("time_inflation"),
                "target_loss": timing["target_loss"],
            }
        )
    return rows


# Table R: a cell matches its budget when the evaluation's measured mean experts per token is this close to it.
MATCH_TOLERANCE = 0.03


def tableR_rows(cells: Sequence[Experiment], results: dict[str, dict[str, Any] | None]) -> list[Row]:
    """The routing rules at equal compute: per task, top-1, top-2, then each rule at each budget."""
    rows = []
    for task in [t for t in TASKS if any(e.task == t and e.table == RULE_TABLE for e in cells)]:
        task_cells = [e for e in cells if e.task == task and e.table == RULE_TABLE]
        timing = _timing(results, [e.id for e in task_cells], task_cells[0].reference)
        for e in task_cells:
            cell = results.get(e.id)
            rule, budget = rule_of(e)
            per_layer = list(((cell or {}).get("eval_experts_per_token_per_layer") or {}).values())
            flops = None if cell is None else cell.get("flops_vs_top2")
            measured = None if cell is None else cell.get("eval_experts_per_token")
            rows.append(
                {
                    "task": task,
                    "metric_name": get_task(task).main_metric,
                    "rule": rule or e.scheme,
                    "budget": budget if budget is not None else (1.0 if e.scheme == "top1" else 2.0),
                    "label": (f"{RULE_LABELS[rule]} @ {budget}" if rule else SCHEME_LABELS[e.scheme]),
                    "short_label": rule or SHORT_LABELS[e.scheme],
                    "cell": e.id,
                    "metric": _metric(cell, task),
                    "norm_time": timing["normalised"].get(e.id),
                    "norm_cpu_time": timing["normalised_cpu"].get(e.id),
                    "experts_per_token": measured,
                    # Training's own routing: expert FLOPs over top-2's, times 2 (k_max 2 at the cpu scale).
                    "train_experts_per_token": None if flops is None else 2 * flops,
                    "layer_min": min(per_layer) if per_layer else None,
                    "layer_max": max(per_layer) if per_layer else None,
                    "matched": (
                        None if budget is None or measured is None else abs(measured - budget) <= MATCH_TOLERANCE
                    ),
                    "target_loss": timing["target_loss"],
                }
            )
    return rows


# table -> its columns, each (row key, header, format)
COLUMNS: dict[int, list[tuple[str, str, str]]] = {
    3: [
        ("task", "Task (metric)", "task"),
        ("label", "Scheme", "str"),
        ("norm_time", "Norm. time", "x"),
        ("paper_norm_time", "Paper norm. time", "x"),
        ("flops_vs_top2", "Expert FLOPs vs top-2", "ratio"),
        ("paper_flops_vs_top2", "Paper FLOPs vs top-2", "ratio"),
        ("two_expert_fraction", "Two-expert tokens", "pct"),
        ("paper_two_expert_fraction", "Paper two-expert", "pct"),
        ("metric", "Metric", "metric"),
        ("paper_metric", "Paper metric", "metric"),
    ],
    5: [
        ("task", "Task (metric)", "task"),
        ("label", "Threshold", "str"),
        ("norm_time", "Norm. time", "x"),
        ("paper_norm_time", "Paper norm. time", "x"),
        ("flops_vs_top2", "Expert FLOPs vs top-2", "ratio"),
        ("two_expert_fraction", "Two-expert tokens", "pct"),
        ("metric", "Metric", "metric"),
        ("paper_metric", "Paper metric", "metric"),
    ],
    6: [
        ("task", "Task (metric)", "task"),
        ("time_inflation", "Time inflation without curriculum", "pct"),
        ("paper_time_inflation", "Paper time inflation", "pct"),
        ("metric_with_curriculum", "Metric with", "metric"),
        ("metric_without_curriculum", "Metric without", "metric"),
        ("metric_delta", "Metric change", "delta"),
        ("paper_metric_delta", "Paper metric change", "delta"),
    ],
    RULE_TABLE: [
        ("task", "Task (metric)", "task"),
        ("label", "Rule @ target experts/token", "str"),
        ("experts_per_token", "Experts/token (eval)", "ratio"),
        ("layer_min", "Layer min", "ratio"),
        ("layer_max", "Layer max", "ratio"),
        ("train_experts_per_token", "Experts/token (training)", "ratio"),
        ("norm_time", "Norm. time", "x"),
        ("metric", "Metric", "metric"),
    ],
}
ROWS = {3: table3_rows, 5: table5_rows, 6: table6_rows, RULE_TABLE: tableR_rows}


def _format(value: Any, kind: str, row: Row, key: str | None = None) -> str:
    """`value` as the column `kind` shows it; with a standard deviation in the row (`<key>_sd`), "mean ± sd"."""
    sd = row.get(f"{key}_sd") if key is not None else None
    text = _format_one(value, kind, row)
    if sd is not None and value is not None:
        if kind == "x":
            text = f"{value:.2f}x ± {sd:.2f}"
        elif kind == "pct":
            text = f"{100 * value:.1f}% ± {100 * sd:.1f}"
        else:
            text = f"{text} ± {_format_one(sd, kind, row).lstrip('+')}"
    n = row.get(f"{key}_n")
    if n is not None and 0 < n < row.get("seeds", n):
        text += f" (n={n})"
    return text


def _format_one(value: Any, kind: str, row: Row) -> str:
    if kind == "task":
        return f"{row['task']} ({row['metric_name']})"
    if value is None:
        return "—"
    if kind == "str":
        return str(value)
    if kind == "x":
        return f"{value:.2f}x"
    if kind == "ratio":
        return f"{value:.2f}"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "delta":
        return f"{value:+.3f}" if row["metric_name"] == "accuracy" else f"{value:+.2f}"
    return f"{value:.3f}" if row["metric_name"] == "accuracy" else f"{value:.2f}"


def _provenance_lines(results: dict[str, dict[str, Any] | None]) -> list[str]:
    done = [r for r in results.values() if r]
    commits = sorted({str(r.get("git_commit")) for r in done})
    hardware = sorted({json.dumps(r.get("hardware"), sort_keys=True) for r in done})
    versions = sorted({json.dumps(r.get("versions"), sort_keys=True) for r in done})
    seeds = sorted({str(r.get("seed")) for r in done})
    return [
        f"- cells with results: {len(done)} of {len(results)}",
        f"- git commit(s): {', '.join(commits) or '—'}",
        f"- hardware: {'; '.join(hardware) or '—'}",
        f"- versions: {'; '.join(versions) or '—'}",
        f"- seed(s): {', '.join(seeds) or '—'}",
    ]


def render_markdown(
    table: int,
    rows: list[Row],
    scale: str,
    results: dict[str, dict[str, Any] | None],
    results_by_seed: dict[int, dict[str, dict[str, Any] | None]] | None = None,
) -> str:
    """The table as markdown; `results_by_seed` (several seeds) adds the ± columns' notes and the timing appendix."""
    columns = COLUMNS[table] if results_by_seed is None else cpu_columns(table, COLUMNS[table])
    if results_by_seed is not None:
        scale_note = cpu_scale_note(list(results_by_seed), sorted({row["task"] for row in rows}))
    elif scale == "smoke":
        scale_note = (
            "**Smoke scale**: tiny randomly initialised models on the generated smoke kit, a few dozen CPU steps per "
            "cell. These numbers test the pipeline; they are NOT paper-scale results and say nothing about the "
            "paper's claims."
        )
    else:
        scale_note = "**Full scale**: the paper's models, data and hyper-parameters (`adamoe/configs/*.yaml`)."
    title = (
        f"# Table {table}: the routing rules at equal compute ({scale} scale)"
        if table == RULE_TABLE
        else f"# Paper Table {table}, reproduced ({scale} scale)"
    )
    lines = [
        title,
        "",
        "Generated by `adamoe reproduce` from the cell results; do not edit.",
        "",
        scale_note,
        "",
        *_provenance_lines(results),
        "",
        "| " + " | ".join(header for _, header, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_format(row.get(key), kind, row, key) for key, _, kind in columns) + " |")
    targets = {row["task"]: row.get("target_loss") for row in rows}
    reference = "the task's Top-2 cell" if table in (3, 5, RULE_TABLE) else "the with-curriculum cell"
    time_text = (
        f"Time: wall clock to reach the task's target training loss over {reference}'s (Table 6: that ratio minus 1)."
        if results_by_seed is None
        else time_note(table)
    )
    lines += [
        "",
        time_text + " The target is the worst final smoothed training loss among the task's cells in this table, "
        "so every cell reaches it (`adamoe/reproduce/normalise.py`); a cell shared with another table can show "
        "another ratio there. Targets"
        + (" (mean over the seeds)" if results_by_seed is not None else "")
        + ": "
        + ", ".join(f"{task} {value:.4f}" if value is not None else f"{task} —" for task, value in targets.items())
        + ".",
        "",
    ]
    if table == RULE_TABLE:
        unmatched = [row["label"] + f" ({row['task']})" for row in rows if row.get("matched") is False]
        lines += [
            "Each rule is steered by its target controller to the budget named in its row (`moe.target_experts`, "
            "docs/routing-rules.md); **Experts/token (eval)** is what the evaluation measured (every MoE layer, "
            f"padding left out), the matched-compute check: within ±{MATCH_TOLERANCE} of the budget in every seed"
            + (f", which these rows miss: {'; '.join(unmatched)}." if unmatched else ", which every rule row meets.")
            + " Layer min / max: the spread of that figure over the layers. Training's figure is over the run's "
            "training steps, where the controller was still moving.",
            "",
        ]
    if table in (3, 5):
        lines += [
            "Expert FLOPs vs top-2 counts expert FFN FLOPs only (dense = one FFN per token = 0.5)"
            + ("; the paper's column is whole-model FLOPs per token over its top-2 row." if table == 3 else "."),
            "",
        ]
    lines += [
        "Perplexity here is true perplexity (lower is better); the paper's 'perplexity' column rises with quality, "
        "so the two are not comparable (docs/reproduce.md).",
        "",
        f"Paper values: {paper_results()['source']['citation']} (arXiv {paper_results()['source']['arxiv']}), "
        "from `adamoe/data/paper_results.json`; '—' where the paper prints none.",
    ]
    if results_by_seed is not None:
        lines += ["", *timing_appendix(results_by_seed)]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[Row]) -> None:
    keys = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def plot_series(table: int, rows: list[Row]) -> list[dict[str, Any]]:
    """Per task, our and the paper's (label, normalised time, metric) points, for `plot_metric_vs_time`."""
    series: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = series.setdefault(
            row["task"], {"task": row["task"], "metric_name": row["metric_name"], "ours": [], "paper": []}
        )
        if table == 6:
            # Both points relative to the with-curriculum cell; the paper's full adaptive metric is Table 3's.
            base = _paper_row("table3", task=row["task"], scheme="adaptive").get("metric")
            entry["ours"] += [
                ("curriculum", 1.0, row["metric_with_curriculum"], None, row.get("metric_with_curriculum_sd"))
            ]
            key = "cpu_time_inflation" if "cpu_time_inflation_n" in row else "time_inflation"
            inflation = row[key]
            entry["ours"] += [
                (
                    "no curriculum",
                    None if inflation is None else 1.0 + inflation,
                    row["metric_without_curriculum"],
                    row.get(f"{key}_sd"),
                    row.get("metric_without_curriculum_sd"),
                )
            ]
            if base is not None and row["paper_time_inflation"] is not None:
                entry["paper"] += [("curriculum", 1.0, base)]
                entry["paper"] += [
                    ("no curriculum", 1.0 + row["paper_time_inflation"], base + row["paper_metric_delta"])
                ]
        else:
            # The CPU-time ratio where there is one (several seeds: the cpu scale), else the wall-clock one.
            key = "norm_cpu_time" if "norm_cpu_time_n" in row else "norm_time"
            # With several seeds, the standard deviations as error bars.
            entry["ours"].append(
                (row["short_label"], row.get(key), row["metric"], row.get(f"{key}_sd"), row.get("metric_sd"))
            )
            entry["paper"].append((row["short_label"], row["paper_norm_time"], row["paper_metric"]))
    for entry in series.values():
        for key in ("ours", "paper"):
            entry[key] = [point for point in entry[key] if point[1] is not None and point[2] is not None]
    return list(series.values())


def write_table(
    table: int, root: Path, cells: Sequence[Experiment], seeds: Sequence[int] | None = None
) -> dict[str, Path]:
    """Write `root/table<N>.md`, `.csv` and `.png` from the results of `cells`; returns the three paths.

    With `seeds`, the results are `cells/<id>-seed<seed>.json` and every figure is the mean ± sd over the seeds.
    """
    order = {e.id: i for i, e in enumerate(expected_experiments())}
    cells = sorted(cells, key=lambda e: order.get(e.id, len(order)))  # the paper's row order, not the run order
    results_by_seed = None
    if seeds is None:
        results = load_cells(root, cells)
        rows = ROWS[table](cells, results)
    else:
        results_by_seed = {seed: load_cells(root, cells, seed) for seed in seeds}
        per_seed = [ROWS[table](cells, by_id) for by_id in results_by_seed.values()]
        rows = aggregate_rows(per_seed)
        if table == RULE_TABLE:  # matched only if every seed's run met its budget, not the mean alone
            for row, *seed_rows in zip(rows, *per_seed, strict=True):
                checks = [r["matched"] for r in seed_rows if r["matched"] is not None]
                row["matched"] = all(checks) if checks else None
        results = {f"{i}-seed{seed}": r for seed, by_id in results_by_seed.items() for i, r in by_id.items()}
    scale = next((r["scale"] for r in results.values() if r), root.name)
    outputs = {
        "markdown": root / f"table{table}.md",
        "csv": root / f"table{table}.csv",
        "plot": root / f"table{table}.png",
    }
    root.mkdir(parents=True, exist_ok=True)
    outputs["markdown"].write_text(render_markdown(table, rows, scale, results, results_by_seed))
    write_csv(outputs["csv"], rows)
    if table == RULE_TABLE:
        plot_rule_frontier(rows, outputs["plot"], title=f"Routing rules at equal compute ({scale} scale)")
    else:
        plot_metric_vs_time(
            plot_series(table, rows),
            outputs["plot"],
            title=f"Paper Table {table}: metric vs normalised training time ({scale} scale)",
        )
    return outputs
