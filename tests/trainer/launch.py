"""Start a worker script on several CPU processes with torchrun (gloo), as a user's launcher would.

Used by the data-parallel and FSDP tests, whose workers (`ddp_worker.py`, `fsdp_worker.py`) run the unchanged
`adamoe.run.recipe.finetune` and write per-rank reports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def torchrun(worker: Path, *args: str | Path, world: int = 2, timeout: float = 180) -> str:
    """Run `torchrun --standalone --nproc_per_node WORLD WORKER ARGS...`; fail the test unless every rank exits 0.

    Returns the launcher's combined output. One thread per process: the ranks share the machine's cores.
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={world}",
        str(worker),
        *map(str, args),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    # A session of its own, so a hang is ended by killing the launcher and every rank together.
    launcher = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = launcher.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        output, _ = launcher.communicate()
        pytest.fail(f"torchrun did not finish in {timeout:.0f} s (a hang in a collective?):\n{output[-4000:]}")
    assert launcher.returncode == 0, output[-4000:]
    return output
