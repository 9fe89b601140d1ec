"""Speed and memory benchmark: does a skipped expert become saved training time?

Three sections, each written as a markdown table and a JSON file into the output folder:

- `layer`: one MoE layer (`Experts`, 16 experts by default), forward + backward, with forced routing: top-1,
  top-2, and adaptive with an exact forced share of two-expert tokens. Each is compared with the *floor*,
  one dense FFN of the same shape run over as many rows as the MoE has token-expert pairs (what a perfect
  dispatch would cost), with top-2, and with the per-expert Python loop over `torch.where` masks that
  transformers' `MixtralExperts` uses.
- `train`: one full training step (forward, loss + balance loss, backward, AdamW step) of a BERT-base- and a
  GPT-2-medium-shaped model built from configs with random weights: dense, top-1, top-2 and adaptive.
  Adaptive runs with `gating="adaptive"` and a forward hook on every router that forces an exact random
  share of two-expert tokens (default 20%) and recomputes the combine weights from the router's own
  probabilities, so gradients flow as in real training while the cost is pinned.
- `native` (`adamoe.bench.native`): a Mixtral- and a Qwen3-MoE-shaped layer (k_max 2 and 8) with an exact
  forced share of the optional expert slots skipped, against fixed top-k and the floor.

Times are medians over repeats after warm-up; the cases of a section take turns in every round, so load
from other processes hits them alike. Memory is the peak allocated during one more step, above what was
allocated before it: `torch.cuda.max_memory_allocated` on CUDA; on CPU the running sum of the allocation
and free events of `torch.profiler(profile_memory=True)` (the CPU allocator's own record). Each repeat also
records the process CPU time beside the wall clock (CPU time well below wall time: the process waited for a
core), and the report the whole run's wall and CPU time and the load average before and after.

    python -m adamoe.bench --device cpu --out bench-results    # fp32, 2048 tokens, 2-layer models
    python -m adamoe.bench --device cuda --out bench-results   # bf16, 16k tokens, full depth
    python -m adamoe.bench --quick                             # toy sizes, seconds

The CLI (`adamoe bench`) and Python callers use `adamoe.bench.report.run_benchmark(BenchConfig(...))`.
docs/performance.md holds the measured figures. This module is the report: it runs the sections (`layer.py`,
`train.py`, `native.py`, each over `harness.py`) and writes the tables; `config.py` is torch-free, so the CLI's
flags come from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..run.output_dir import check_report_dir
from .config import TARGETS, BenchConfig
from .harness import environment
from .layer import bench_layer
from .native import bench_native, native_markdown
from .train import bench_train


def check_targets(rows: list[dict], device_type: str) -> dict[str, dict]:
    """The speed targets for this device type, with the measured value where the results hold it."""
    layer = [r for r in rows if r["section"] == "layer" and r["method"] == "adamoe"]
    train = [r for r in rows if r["section"] == "train"]
    measured: dict[str, list[float]] = {}
    for r in layer:
        measured.setdefault("layer max adamoe/floor", []).append(r["ratio_to_floor"])
        if r["gating"] == "top1":
            measured.setdefault("layer top1/top2", []).append(r["ratio_to_top2"])
        if r["gating"] == "adaptive" and abs(r["forced_two_expert_fraction"] - 0.2) < 1e-9:
            measured.setdefault("layer adaptive20/top2", []).append(r["ratio_to_top2"])
    for r in rows:
        if r["section"] == "native" and r["method"] == "adamoe" and r["skip_fraction"] == 0.5:
            measured.setdefault("native skip50/topk", []).append(r["ratio_to_topk"])
    for r in train:
        if r["variant"] == "top1":
            measured.setdefault("train top1/dense", []).append(r["ratio_to_dense"])
        if r["variant"] == "adaptive":
            measured.setdefault("train adaptive/top2", []).append(r["ratio_to_top2"])
    measured = {name: [v for v in values if v is not None] for name, values in measured.items()}
    out = {}
    for name, limit in TARGETS.get(device_type, {}).items():
        worst = max(measured[name]) if measured.get(name) else None
        out[name] = {"limit": limit, "worst": worst, "met": None if worst is None else worst <= limit}
    return out


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "" if value is None else format(value, spec)


def to_markdown(report: dict[str, Any]) -> str:
    env, cfg = report["environment"], report["config"]
    lines = [
        f"# adamoe benchmark: {cfg['device']}, {cfg['dtype']}, {cfg['num_experts']} experts",
        "",
        f"torch {env['torch']}, {env.get('gpu') or env['cpu']} ({env['threads']} threads), "
        f"commit {env['git_commit'][:12]}. Median of {cfg['repeats']} repeats after {cfg['warmup']} warm-up; "
        "peak memory is what one step allocates above what was resident before it.",
    ]
    layer = [r for r in report["results"] if r["section"] == "layer"]
    if layer:
        lines += ["", f"## One MoE layer, forward + backward, {cfg['tokens']} tokens", ""]
        lines += ["| shape | case | pairs | 2-expert share | ms | / floor | / top2 | peak MiB |", "|---" * 8 + "|"]
        for r in layer:
            share = _fmt(r.get("two_expert_fraction"), ".1%")
            lines.append(
                f"| {r['shape']} | {r['case']} | {r['pairs']} | {share} | {r['time_ms']:.1f} | "
                f"{r['ratio_to_floor']:.2f} | {_fmt(r['ratio_to_top2'])} | {_fmt(r.get('peak_mib'), '.0f')} |"
            )
    train = [r for r in report["results"] if r["section"] == "train"]
    if train:
        lines += ["", "## Training step (forward, loss, backward, AdamW)", ""]
        lines += ["| shape | layers | variant | tokens | 2-expert share | ms | / dense | / top2 | peak MiB |"]
        lines += ["|---" * 9 + "|"]
        for r in train:
            lines.append(
                f"| {r['shape']} | {r['layers']} | {r['variant']} | {r['tokens']} | "
                f"{_fmt(r['two_expert_fraction'], '.1%')} | {_fmt(r['time_ms'], '.1f') or r['error']} | "
                f"{_fmt(r['ratio_to_dense'])} | "
                f"{_fmt(r['ratio_to_top2'])} | {_fmt(r['peak_mib'], '.0f')} |"
            )
    native = [r for r in report["results"] if r["section"] == "native"]
    if native:
        lines += native_markdown(native, cfg)
    run = report.get("run")
    if run:
        lines += ["", f"Whole run: {run['wall_s']:.0f} s wall clock, {run['process_cpu_s']:.0f} s process CPU time;"]
        lines[-1] += f" load average {run['load_before'][0]:.2f} before, {run['load_after'][0]:.2f} after."
    if report["targets"]:
        lines += ["", "## Targets", "", "| target | limit | worst measured | met |", "|---|---|---|---|"]
        for name, t in report["targets"].items():
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            lines.append(f"| {name} | <= {t['limit']} | {_fmt(t['worst'])} | {met} |")
    return "\n".join(lines) + "\n"


REPORT_FILES = ("bench.json", "bench.md")  # what a benchmark writes into its folder


def run_benchmark(config: BenchConfig | None = None) -> dict[str, Any]:
    """Run the benchmark; write `bench.json` and `bench.md` into `config.output_dir` (unless None).

    Returns:
        The report: `config` (resolved), `environment`, `results` (one dict per row, with `section`) and
        `targets` (the limits for this device type, the worst measured ratio, and whether it is met).

    Example:
        ```python
        >>> report = run_benchmark(BenchConfig(quick=True, sections=("layer",), output_dir=None))
        >>> report["results"][0]["case"], report["results"][0]["pairs"]
        ('top1 (adaptive 0%)', 256)
        ```
    """
    config = (config or BenchConfig()).resolved()
    if config.output_dir is not None:  # before minutes of measuring: a folder it may not write fails first
        check_report_dir(config.output_dir, REPORT_FILES, overwrite=config.overwrite, flag="--out")
    device = torch.device(config.device)
    dtype = getattr(torch, config.dtype)
    threads = torch.get_num_threads()
    wall, cpu, load_before = time.perf_counter(), time.process_time(), os.getloadavg()
    if config.threads:
        torch.set_num_threads(config.threads)
    results = []
    try:
        for name in config.shapes:
            shape = config.shape(name)
            if "layer" in config.sections:
                results += [{"section": "layer"} | row for row in bench_layer(shape, config, device, dtype)]
            if "train" in config.sections:
                results += [{"section": "train"} | row for row in bench_train(shape, config, device, dtype)]
        if "native" in config.sections:
            results += [{"section": "native"} | row for row in bench_native(config, device, dtype)]
        env = environment(device)
    finally:
        torch.set_num_threads(threads)
    run = {"wall_s": time.perf_counter() - wall, "process_cpu_s": time.process_time() - cpu}
    run |= {"load_before": load_before, "load_after": os.getloadavg()}  # 1, 5 and 15 minute load averages
    report = {"config": dataclasses.asdict(config), "environment": env, "run": run, "results": results}
    report["targets"] = check_targets(results, device.type) if not config.quick else {}
    if config.output_dir is not None:
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "bench.md").write_text(to_markdown(report))
    return report
