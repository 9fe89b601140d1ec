"""Metric vs normalised training time, one panel per task, ours and the paper's side by side.

Our metric and the paper's sit on two y-axes of the same panel (left: ours, filled circles; right: paper,
hollow squares) because at smoke scale they live on different scales, and the paper's perplexity column runs
the other way from ours; the shared x-axis (training time normalised to the reference cell) is what compares.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402

OURS_COLOR, PAPER_COLOR = "tab:blue", "tab:orange"


def plot_metric_vs_time(series: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Write a PNG with one panel per task.

    Args:
        series: per task `{"task", "metric_name", "ours": [(label, x, y[, x_sd, y_sd])], "paper": [(label, x, y)]}`;
            a point's standard deviations over seeds (None: one seed) are drawn as error bars.
        path: where the PNG goes.
        title: the figure title.
    """
    columns = min(3, max(len(series), 1))
    rows = max(math.ceil(len(series) / columns), 1)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.2 * rows), squeeze=False)
    legend_handles: list[Any] = []
    for ax in axes.flat[len(series) :]:
        ax.set_visible(False)
    for ax, entry in zip(axes.flat, series, strict=False):
        metric = entry["metric_name"]
        handles = []
        if entry["ours"]:
            points = [(*p, None, None)[:5] for p in entry["ours"]]
            labels, xs, ys, x_sds, y_sds = zip(*points, strict=True)
            handles.append(ax.scatter(xs, ys, color=OURS_COLOR, s=45, zorder=3, label="ours (left axis)"))
            for label, x, y, x_sd, y_sd in points:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8, color=OURS_COLOR)
                if x_sd is not None or y_sd is not None:  # ± one standard deviation over the seeds
                    ax.errorbar(x, y, xerr=x_sd, yerr=y_sd, color=OURS_COLOR, linewidth=1, capsize=3, zorder=2)
        ax.set_ylabel(f"ours: {metric}", color=OURS_COLOR)
        ax.tick_params(axis="y", colors=OURS_COLOR)
        twin = ax.twinx()
        if entry["paper"]:
            labels, xs, ys = zip(*entry["paper"], strict=True)
            handles.append(
                twin.scatter(
                    xs,
                    ys,
                    facecolors="none",
                    edgecolors=PAPER_COLOR,
                    marker="s",
                    s=55,
                    zorder=3,
                    label="paper (right axis)",
                )
            )
            for label, x, y in entry["paper"]:
                twin.annotate(
                    label, (x, y), textcoords="offset points", xytext=(5, -11), fontsize=8, color=PAPER_COLOR
                )
        twin.set_ylabel(f"paper: {metric}", color=PAPER_COLOR)
        twin.tick_params(axis="y", colors=PAPER_COLOR)
        for axis in (ax, twin):
            axis.margins(x=0.12, y=0.15)  # room for the point labels at the edges
            axis.ticklabel_format(axis="y", useOffset=False)  # plain values, never "+1.749e1" offsets
        ax.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("training time to target loss (reference = 1.0)")
        ax.set_title(entry["task"])
        ax.grid(alpha=0.3)
        if handles:
            legend_handles = handles
    fig.suptitle(title, y=0.995)
    if legend_handles:
        fig.legend(handles=legend_handles, loc="upper center", bbox_to_anchor=(0.5, 0.965), ncols=2, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rule_frontier(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Table R: the metric against the measured experts per token (expert FLOPs), one panel per task, one line per
    rule through its budgets, and top-1 / top-2 as the two fixed points; error bars are ± one sd over the seeds."""
    tasks = list(dict.fromkeys(row["task"] for row in rows))
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(5.6 * max(len(tasks), 1), 4.4), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        task_rows = [r for r in rows if r["task"] == task and r.get("metric") is not None]
        for rule in dict.fromkeys(r["rule"] for r in task_rows):
            points = sorted(
                (r for r in task_rows if r["rule"] == rule and r.get("experts_per_token") is not None),
                key=lambda r: r["experts_per_token"],
            )
            if not points:
                continue
            xs, ys = [r["experts_per_token"] for r in points], [r["metric"] for r in points]
            fixed = rule in ("top1", "top2")
            ax.errorbar(
                xs,
                ys,
                xerr=[r.get("experts_per_token_sd") or 0 for r in points],
                yerr=[r.get("metric_sd") or 0 for r in points],
                marker="s" if fixed else "o",
                linestyle="none" if fixed else "-",
                color="black" if fixed else None,
                capsize=3,
                label=rule,
            )
        ax.set_xlabel("experts per token, measured at evaluation (expert FLOPs)")
        ax.set_ylabel(task_rows[0]["metric_name"] if task_rows else "metric")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
