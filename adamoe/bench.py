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
- `native` (`adamoe.bench_native`): a Mixtral- and a Qwen3-MoE-shaped layer (k_max 2 and 8) with an exact
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

The CLI (`adamoe bench`) and Python callers use `run_benchmark(BenchConfig(...))`. docs/performance.md
holds the measured figures. This module holds the harness, the `layer` section and the report; the config
(`bench_config.py`, torch-free, so the CLI's flags come from it), the `train` section (`bench_train.py`) and the
`native` section (`bench_native.py`) have their own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .bench_config import TARGETS, BenchConfig, Shape
from .experts import Experts
from .provenance import provenance


@dataclass
class Case:
    """One thing to time: `run()` is one forward + backward (+ optimizer step); `reset()` drops the gradients."""

    run: Callable[[], Any]
    reset: Callable[[], Any]


def backward_case(
    module: nn.Module, inputs: torch.Tensor, grad: torch.Tensor, forward: Callable[[], torch.Tensor]
) -> Case:
    """`forward().backward(grad)` as a case, with `module`'s and `inputs`' gradients dropped before each run."""

    def reset():
        module.zero_grad(set_to_none=True)
        inputs.grad = None

    def run():
        reset()  # as `optimizer.zero_grad()` does: every step allocates its gradients
        forward().backward(grad)

    return Case(run, reset)


def peak_memory_mib(case: Case, device: torch.device) -> float:
    """Peak memory allocated while `case.run()` runs, above what was allocated before it, in MiB.

    The gradients are dropped first, so the peak counts them: it is what a training step needs on top of
    the weights (and optimizer state).
    """
    case.reset()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        case.run()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        case.run()
    kineto_events = prof.profiler.kineto_results.events()
    events = sorted((e.start_ns(), e.nbytes()) for e in kineto_events if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def measure(cases: dict[str, Case], config: BenchConfig, device: torch.device) -> dict[str, dict[str, Any]]:
    """`{"times_ms": [...], "time_ms": median, "min_ms": ..., "cpu_ms": median, "peak_mib": ...}` per case.

    Every case is warmed up, then runs once more to measure memory (after all warm-ups, so that state
    created by a first step, such as AdamW's moments, counts for no case), then all are timed in rounds
    in which the cases take turns, so a burst of load from other processes hits them alike.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = {name: {"times_ms": [], "cpu_times_ms": [], "peak_mib": None} for name in cases}
    for case in cases.values():
        for _ in range(config.warmup):
            case.run()
    if config.memory:
        for name, case in cases.items():
            out[name]["peak_mib"] = peak_memory_mib(case, device)
    for _ in range(config.repeats):
        for name, case in cases.items():
            sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            case.run()
            sync()
            out[name]["times_ms"].append((time.perf_counter() - start) * 1e3)
            out[name]["cpu_times_ms"].append((time.process_time() - cpu_start) * 1e3)  # all threads together
    for result in out.values():
        result["time_ms"] = statistics.median(result["times_ms"])
        result["cpu_ms"] = statistics.median(result["cpu_times_ms"])
        result["min_ms"] = min(result["times_ms"])
    return out


# ----------------------------------------------------------------------------------------------- layer


def forced_routing(num_tokens: int, num_experts: int, fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """Routing with every expert equally loaded and exactly `round(fraction * num_tokens)` two-expert tokens."""
    g = torch.Generator().manual_seed(seed)
    first = (torch.arange(num_tokens) % num_experts)[torch.randperm(num_tokens, generator=g)]  # (num_tokens,)
    second = (first + 1 + torch.randint(num_experts - 1, (num_tokens,), generator=g)) % num_experts
    two = torch.zeros(num_tokens, dtype=torch.bool)
    two[torch.randperm(num_tokens, generator=g)[: round(fraction * num_tokens)]] = True
    p = torch.rand(num_tokens, 2, generator=g).sort(dim=-1, descending=True).values  # p1 >= p2
    weights = torch.where(two.unsqueeze(-1), p / p.sum(-1, keepdim=True), torch.tensor([1.0, 0.0]))
    active = torch.stack([torch.ones_like(two), two], dim=-1)  # (num_tokens, 2)
    return {"index": torch.stack([first, second], dim=-1), "weights": weights * active, "active": active}


def mixtral_loop(experts: Experts, x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor, active):
    """The expert loop of transformers' `MixtralExperts.forward`, on our expert weights, for comparison."""
    out = torch.zeros_like(x)
    e = experts.num_experts
    with torch.no_grad():  # an unused second choice points at the extra class `e`, as Mixtral's padding does
        mask = nn.functional.one_hot(torch.where(active, index, e), num_classes=e + 1).permute(2, 1, 0)
        hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
    for expert in hit:
        expert = expert[0]
        if expert == e:
            continue
        slot, token = torch.where(mask[expert])
        inner = experts.activation(x[token] @ experts.w_in[expert] + experts.b_in[expert])
        y = (inner @ experts.w_out[expert] + experts.b_out[expert]) * weights[token, slot, None]
        out.index_add_(0, token, y.to(out.dtype))
    return out


def case_name(fraction: float) -> tuple[str, str]:
    """(case, gating) of a forced two-expert share. The experts never see the gating rule, so top-1 *is*
    adaptive at 0% and top-2 adaptive at 100%: one measurement each."""
    if fraction == 0:
        return "top1 (adaptive 0%)", "top1"
    if fraction == 1:
        return "top2 (adaptive 100%)", "top2"
    return f"adaptive {fraction:.0%}", "adaptive"


def bench_layer(shape: Shape, config: BenchConfig, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Forward + backward of one `Experts` layer per forced routing, of the Mixtral loop, and of the floors."""
    torch.manual_seed(config.seed)
    n, h, f = config.tokens, shape.hidden_size, shape.ffn_size
    experts = Experts(
        num_experts=config.num_experts, hidden_size=h, ffn_size=f, activation=nn.GELU(), dispatch=config.dispatch
    ).to(device, dtype)
    dense = nn.Sequential(nn.Linear(h, f), nn.GELU(), nn.Linear(f, h)).to(device, dtype)
    x = torch.randn(n, h, device=device, dtype=dtype, requires_grad=True)
    upstream = torch.randn(n, h, device=device, dtype=dtype)

    rows, cases = [], {}
    for fraction in config.fractions:
        name, gating = case_name(fraction)
        r = {k: v.to(device) for k, v in forced_routing(n, config.num_experts, fraction, config.seed).items()}
        r["weights"] = r["weights"].to(dtype)
        row = {"case": name, "method": "adamoe", "gating": gating, "forced_two_expert_fraction": fraction}
        row |= {"pairs": int(r["active"].sum()), "two_expert_fraction": float(r["active"][:, 1].float().mean())}
        rows.append(row)
        cases[name] = backward_case(
            experts, x, upstream, lambda r=r: experts(x, r["index"], r["weights"], r["active"])
        )
        if gating in config.mixtral_loop:
            rows.append(row | {"case": f"{gating} mixtral-loop", "method": "mixtral-loop"})
            cases[f"{gating} mixtral-loop"] = backward_case(
                experts, x, upstream, lambda r=r: mixtral_loop(experts, x, r["index"], r["weights"], r["active"])
            )
    for pairs in sorted({row["pairs"] for row in rows}):
        floor_x = torch.randn(pairs, h, device=device, dtype=dtype, requires_grad=True)
        floor_up = torch.randn(pairs, h, device=device, dtype=dtype)
        cases[f"floor {pairs}"] = backward_case(dense, floor_x, floor_up, lambda fx=floor_x: dense(fx))
        rows.append({"case": f"floor {pairs}", "method": "floor", "gating": None, "pairs": pairs})

    measured = measure(cases, config, device)
    floor = {row["pairs"]: measured[row["case"]]["time_ms"] for row in rows if row["method"] == "floor"}
    top2 = next(measured[row["case"]]["time_ms"] for row in rows if row["gating"] == "top2")
    for row in rows:
        row |= {"shape": shape.name, "hidden": h, "ffn": shape.ffn_size, "tokens": n, "experts": config.num_experts}
        row |= measured[row["case"]]
        row["ratio_to_floor"] = row["time_ms"] / floor[row["pairs"]]
        row["ratio_to_top2"] = row["time_ms"] / top2 if row["method"] == "adamoe" else None
    return rows


# ----------------------------------------------------------------------------------------------- train


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


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, commit and hardware (`adamoe.provenance`, as every results file has them), and the threads."""
    stamp = provenance()
    env = {
        "torch": torch.__version__,
        "cpu": stamp["hardware"]["processor"],
        "threads": torch.get_num_threads(),
        "git_commit": stamp["git_commit"] or "",
        **stamp,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


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
        from .bench_native import native_markdown  # imported here: bench_native builds on this module

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
                from .bench_train import bench_train  # imported here: bench_train builds on this module

                results += [{"section": "train"} | row for row in bench_train(shape, config, device, dtype)]
        if "native" in config.sections:
            from .bench_native import bench_native  # imported here: bench_native builds on this module

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


def main(argv: list[str] | None = None) -> None:
    """`python -m adamoe.bench`: the same command as `adamoe bench` (one flag per `BenchConfig` field)."""
    import typer

    from .cli.bench import bench_command

    app = typer.Typer(add_completion=False, rich_markup_mode=None)
    app.command()(bench_command)
    command = typer.main.get_command(app)
    command.main(args=argv, prog_name="python -m adamoe.bench", standalone_mode=argv is None)


if __name__ == "__main__":
    main()
