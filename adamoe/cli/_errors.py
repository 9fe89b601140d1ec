"""Turn the library's user-facing errors into a one-paragraph message and exit code 2, not a traceback."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import Any

import typer


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors whose message already says what was wrong and what to do (imported when a command fails, so
    that `--help` imports none of the modules that define them)."""
    from ..bench.config import BenchConfigError
    from ..moe.config import MoEConfigError
    from ..moe.router import RouterNumericsError, RoutingStateError
    from ..patching.export import ExportError
    from ..patching.gguf import GGUFError
    from ..patching.loading import CheckpointError
    from ..patching.lora import LoraError
    from ..patching.patch import UnsupportedArchitectureError
    from ..run.config import RunConfigError
    from ..run.output_dir import OutputDirError
    from ..tasks import DataFormatError, HubUnreachableError, TaskInputError
    from ..trainer.checkpointing import NonFiniteWeightsError

    return (
        BenchConfigError,
        CheckpointError,
        DataFormatError,
        ExportError,
        FileNotFoundError,
        GGUFError,
        HubUnreachableError,
        LoraError,
        MoEConfigError,
        NonFiniteWeightsError,
        OutputDirError,
        RouterNumericsError,
        RoutingStateError,
        RunConfigError,
        TaskInputError,
        UnsupportedArchitectureError,
    )


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Exception as err:  # torch and safetensors report a full disk as RuntimeError / SafetensorError
            if isinstance(err, user_errors()):
                _exit_with(str(err), err)
            full = _disk_full(err)
            if full is None:
                raise
            from ..trainer.checkpointing import STAGING_DIR

            # A full disk is the user's to fix, and the run is not lost: checkpoints are written aside and moved
            # into place (adamoe/trainer/checkpointing.py), so the last complete one is still there.
            filename = getattr(full, "filename", None)
            where = f" while writing {filename}" if filename else ""
            _exit_with(
                f"No space left on device{where}. The last complete checkpoint in the output directory is intact: "
                f"free some space, then continue the run with --resume. A leftover staging folder "
                f"(OUTPUT_DIR/{STAGING_DIR}) only holds the unfinished save and can be deleted; --resume removes "
                "it itself.",
                err,
            )

    return wrapper


def _disk_full(err: BaseException) -> BaseException | None:
    """The error in `err`'s chain that says the disk is full (ENOSPC), if any."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return current
        if "No space left on device" in str(current) or "ENOSPC" in str(current):
            return current
        current = current.__cause__ or current.__context__
    return None


def _exit_with(message: str, cause: BaseException) -> None:
    typer.secho(f"Error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2) from cause
