"""The benchmark's harness: a case to time, how it is timed (rounds in which the cases take turns, CPU time
beside wall clock) and how its peak memory is read, and the environment stamped into the report. Every section
(`layer`, `train`, `native`) builds its cases and hands them to `measure`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..run.provenance import provenance
from .config import BenchConfig


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


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, commit and hardware (`adamoe.run.provenance`, as every results file has them), and the threads."""
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
