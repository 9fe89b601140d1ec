"""How long the CLI takes to answer `--help` and `tasks`, beside `import transformers` on the same machine.

    python scripts/startup_time.py [--repeats 5]

Each command runs in a fresh process; the figure is the median wall clock and the process CPU time (user + system
of the child). The target (issue: a newcomer's first hour) is `adamoe --help` in under half of `import transformers`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c 'import transformers'": [sys.executable, "-c", "import transformers"],
    "adamoe --help": [shutil.which("adamoe") or "adamoe", "--help"],
    "adamoe finetune --help": [shutil.which("adamoe") or "adamoe", "finetune", "--help"],
    "adamoe tasks": [shutil.which("adamoe") or "adamoe", "tasks"],
}


def measure(command: list[str], repeats: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeats):
        before = os.times()
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
        after = os.times()
        cpus.append((after.children_user - before.children_user) + (after.children_system - before.children_system))
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    print(f"load average: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs, median of {repeats} runs")
    figures = {name: measure(command, repeats) for name, command in COMMANDS.items()}
    reference = figures["python -c 'import transformers'"][0]
    for name, (wall, cpu) in figures.items():
        print(f"{name:34s} wall {wall:6.3f} s  cpu {cpu:6.3f} s  ({wall / reference:.2f}x import transformers)")


if __name__ == "__main__":
    main()
