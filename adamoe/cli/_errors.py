"""Turn the library's user-facing errors into a one-paragraph message and exit code 2, not a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer

from ..config import MoEConfigError
from ..finetune import OutputDirError, RunConfigError
from ..modeling import CheckpointError
from ..patching import UnsupportedArchitectureError
from ..router import RouterNumericsError
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
            typer.secho(f"Error: {err}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from err

    return wrapper
