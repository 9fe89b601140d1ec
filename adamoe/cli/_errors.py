"""Turn the library's user-facing errors into a one-paragraph message and exit code 2, not a traceback."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import Any

import typer

from ..config import MoEConfigError
from ..finetune import OutputDirError
from ..modeling import CheckpointError
from ..patching import UnsupportedArchitectureError
from ..router import RouterNumericsError
from ..run_config import RunConfigError
from ..tasks import DataFormatError, HubUnreachableError

# Errors whose message already says what was wrong and what to do.
USER_ERRORS = (
    CheckpointError,
    DataFormatError,
    FileNotFoundError,
    HubUnreachableError,
    MoEConfigError,
    OutputDirError,
    RouterNumericsError,
    RunConfigError,
    UnsupportedArchitectureError,
)


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as err:
            _exit_with(str(err), err)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            # A full disk is the user's to fix, and the run is not lost: checkpoints are written aside and moved
            # into place (adamoe/trainer/checkpointing.py), so the last complete one is still there.
            where = f" while writing {err.filename}" if err.filename else ""
            _exit_with(
                f"No space left on device{where}. The last complete checkpoint in the output directory is intact: "
                "free some space, then continue the run with --resume.",
                err,
            )

    return wrapper


def _exit_with(message: str, cause: BaseException) -> None:
    typer.secho(f"Error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2) from cause
