"""Training-free routing budgets: one trained checkpoint evaluated at a sweep of its rule's parameter.

A routing rule's parameter (T of the gap rule, p of top-p) can change on trained weights (`adamoe.set_routing`).
Evaluating one checkpoint at several values gives the quality-against-compute frontier of that checkpoint: the
task's metric beside the mean number of experts a token used in the evaluation (every MoE layer, padding left
out, generation steps included), from which a user picks a serving budget without retraining. The figures are
written as `frontier.json`, `frontier.md` and `frontier.png` (`adamoe evaluate --sweep 0,0.05,0.1,0.2,1`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..files import write_json_atomically, write_text_atomically
from ..moe.stats import PairCounter
from ..patching.patch import moe_config_of, set_routing
from .config import RunConfigError
from .output_dir import check_report_dir, claim_in_run
from .provenance import provenance
from .recipe import evaluation_trainer, task_metrics

SWEEP_FILES = ("frontier.json", "frontier.md", "frontier.png", "trainer_log.jsonl")  # the evaluations log too


def _check_sweepable(rule: str | None) -> None:
    if rule == "expert_threshold":
        raise RunConfigError(
            "--sweep moves one parameter, and expert_threshold has none: its thresholds are one per expert, "
            "estimated in training. Sweep --rule gap or --rule top_p on the same weights instead."
        )


def sweep_routing(
    task_name: str,
    checkpoint: str,
    values: Sequence[float],
    *,
    rule: str | None = None,
    output_dir: str | None = None,
    overwrite: bool = False,
    **evaluation: Any,
) -> list[dict[str, Any]]:
    """Evaluate `checkpoint` with adaptive gating at each parameter value in `values` (under `rule`, else the
    checkpoint's own rule); returns one row per value: `threshold`, `rule`, `experts_per_token` and the metrics.

    `evaluation` takes `evaluate_checkpoint`'s data arguments (`validation_file`, `max_eval_samples`, `data`,
    `training`). The report goes to `output_dir` (default `<checkpoint>/sweep`), checked before anything runs.
    """
    if not values or any(not math.isfinite(v) or not 0 <= v <= 1 for v in values):
        raise RunConfigError(f"--sweep takes values in [0, 1] (the rule's parameter), got {list(values)}.")
    _check_sweepable(rule)
    out = check_report_dir(output_dir or Path(checkpoint) / "sweep", SWEEP_FILES, overwrite=overwrite)
    task, _, model, trainer = evaluation_trainer(task_name, checkpoint, output_dir=out, **evaluation)
    stored = moe_config_of(model)
    if stored is None:
        raise RunConfigError(f"{checkpoint} is a dense model: a routing sweep needs an adamoe checkpoint.")
    rule = rule or stored.rule
    _check_sweepable(rule)
    counter = PairCounter(model)
    rows = []
    try:
        for value in sorted(set(values)):
            # A fixed parameter: a steered checkpoint's controller would otherwise override every swept value.
            set_routing(model, gating="adaptive", rule=rule, threshold=float(value), target_experts=None)
            counter.reset()
            with torch.no_grad():
                metrics = task_metrics(task, trainer.evaluate())
            rows.append({"rule": rule, "threshold": float(value), "experts_per_token": counter.experts_per_token()})
            rows[-1] |= metrics
    finally:
        counter.close()
    if trainer.is_world_process_zero():
        _write(out, task, checkpoint, stored.top_k, rows)
        claim_in_run(out)
    return rows


def _write(out: Path, task: Any, checkpoint: str, top_k: int, rows: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    metric = task.main_metric
    write_json_atomically(
        out / "frontier.json",
        {"task": task.name, "checkpoint": checkpoint, "top_k": top_k, "rows": rows, **provenance()},
    )
    lines = [
        f"# Routing frontier: {task.name}, {checkpoint}",
        "",
        f"One trained checkpoint, its rule's parameter swept without retraining; experts per token is the mean over "
        f"the evaluation's token-layers (k_max = {top_k}).",
        "",
        f"| rule | parameter | experts per token | {metric} |",
        "|---|---|---|---|",
    ]
    for row in rows:
        experts = "—" if row["experts_per_token"] is None else f"{row['experts_per_token']:.3f}"
        value = row.get(metric)
        lines.append(
            f"| {row['rule']} | {row['threshold']:g} | {experts} | {'—' if value is None else f'{value:.4f}'} |"
        )
    write_text_atomically(out / "frontier.md", "\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["experts_per_token"], r.get(metric), r["threshold"]) for r in rows if r.get(metric) is not None]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if points:
        xs, ys, labels = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o")
        for x, y, label in points:
            ax.annotate(f"{label:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("experts per token")
    ax.set_ylabel(metric)
    ax.set_title(f"{task.name}: {rows[0]['rule']} rule, parameter swept")
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=120)
    plt.close(fig)
