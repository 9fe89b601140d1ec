"""Per-layer two-expert shares over training, from the cpu scale's run folders: a check of why adaptive
gating or the curriculum does or does not act.

    python scripts/routing_over_training.py results/cpu table6-sst2-curriculum table6-sst2-no-curriculum

For each cell (a run-folder name without its `-seed<N>` suffix) it prints, averaged over the seeds found, the
share of tokens on two experts in every MoE layer at the first logging event, at each epoch boundary and at the
last event, then the whole run's share and expert-load imbalance (the busiest expert's load over the mean).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def events(run: Path) -> list[dict]:
    lines = (run / "trainer_log.jsonl").read_text().splitlines()
    return [e for e in (json.loads(line) for line in lines if line.strip()) if "two_expert_fraction" in e]


def checkpoints(log: list[dict]) -> list[dict]:
    """The first event, the last event of every epoch, and the last event."""
    picked = [log[0]]
    for i, e in enumerate(log[:-1]):
        if int(e["epoch"] + 1e-9) < int(log[i + 1]["epoch"] + 1e-9):
            picked.append(e)
    return picked + ([log[-1]] if log[-1] is not picked[-1] else [])


def main(root: str, *cells: str) -> None:
    runs_dir = Path(root) / "runs"
    for cell in cells:
        runs = sorted(runs_dir.glob(f"{cell}-seed*"))
        logs = [events(run) for run in runs if (run / "trainer_log.jsonl").is_file()]
        if not logs:
            print(f"{cell}: no runs under {runs_dir}")
            continue
        # In model order: the layer index is the key's last number ("...layers.10.mlp" after "...layers.9.mlp").
        layers = sorted(
            (k for k in logs[0][0] if k.startswith("two_expert_fraction/")),
            key=lambda k: [int(part) if part.isdigit() else part for part in k.split(".")],
        )
        print(f"\n{cell} ({len(logs)} seeds): two-expert share per layer")
        rows = list(zip(*(checkpoints(log) for log in logs), strict=False))
        header = "| event | epoch | " + " | ".join(k.rsplit(".", 1)[-1] for k in layers) + " | all | load max/mean |"
        print(header + "\n" + "|---" * (len(layers) + 4) + "|")
        for row in rows:
            loads = [
                statistics.fmean(v for k, v in e.items() if k.startswith("expert_load_max_over_mean/")) for e in row
            ]
            cells_ = [statistics.fmean(e[k] for e in row) for k in layers]
            print(
                f"| step {row[0]['step']} | {statistics.fmean(e['epoch'] for e in row):.2f} | "
                + " | ".join(f"{v:.1%}" for v in cells_)
                + f" | {statistics.fmean(e['two_expert_fraction'] for e in row):.1%} | {statistics.fmean(loads):.2f} |"
            )


if __name__ == "__main__":
    main(*sys.argv[1:])
