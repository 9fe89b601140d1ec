"""`adamoe bench`: one option per `BenchConfig` field, generated from the dataclass so the flags have one definition.

The command's signature is built from the fields (name, type, default, help) and handed to typer like any other
command; list fields become repeatable options (`--sections layer --sections native`), booleans switches.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Annotated, Any

import typer

from ..bench.config import BenchConfig, BenchConfigError
from ._errors import friendly_errors

LIST_FIELDS = {"sections": str, "shapes": str, "mixtral_loop": str, "fractions": float}
LIST_FIELDS |= {"native_shapes": str, "skip_fractions": float}
EXAMPLE = "Example: adamoe bench --device cpu --sections layer --threads 1 --out bench-results"


def _option(f: dataclasses.Field) -> tuple[Any, Any]:
    """(annotation, default) of the typer parameter for one `BenchConfig` field."""
    help_text = f.metadata.get("help")
    flags = ["--" + f.name.replace("_", "-")] + (["--out"] if f.name == "output_dir" else [])
    if f.name in LIST_FIELDS:
        kind: Any = list[str] | None
        default = None  # None: the dataclass default
        default_text = " ".join(map(str, f.default)) if f.default else "per device"
        help_text = f"{help_text} Repeat the flag for several; 'none' for none. [default: {default_text}]"
        option = typer.Option(*flags, help=help_text, show_default=False)
    elif f.type == "bool":
        kind, default = bool, f.default
        name = f.name.replace("_", "-")
        option = typer.Option(f"--{name}/--no-{name}", help=help_text)
    else:
        base = next((t for t in (int, float) if t.__name__ in str(f.type)), str)
        kind, default = (base | None) if f.default is None else base, f.default
        option = typer.Option(*flags, help=help_text)
    return Annotated[kind, option], default


@friendly_errors
def bench_command(**values: Any) -> None:
    from ..bench.report import run_benchmark, to_markdown

    for name in LIST_FIELDS:
        if values.get(name) is None:
            values.pop(name, None)  # the dataclass default
        elif values[name] == ["none"]:
            values[name] = ()
        else:
            try:
                values[name] = tuple(map(LIST_FIELDS[name], values[name]))
            except ValueError as err:
                flag = "--" + name.replace("_", "-")
                raise BenchConfigError(
                    f"{flag} takes {LIST_FIELDS[name].__name__} values, got {values[name]}."
                ) from err
    report = run_benchmark(BenchConfig(**values))
    typer.echo(to_markdown(report))


_parameters = []
for _field in dataclasses.fields(BenchConfig):
    _annotation, _default = _option(_field)
    _parameters.append(
        inspect.Parameter(_field.name, inspect.Parameter.KEYWORD_ONLY, default=_default, annotation=_annotation)
    )
bench_command.__signature__ = inspect.Signature(_parameters)  # type: ignore[attr-defined]
bench_command.__annotations__ = {p.name: p.annotation for p in _parameters}
bench_command.__doc__ = (
    "Speed and memory benchmark of MoE layers and training steps: does a skipped expert become saved time?\n\n"
    "Writes bench.json and bench.md to --out and prints the tables (docs/performance.md holds the figures).\n\n"
    + EXAMPLE
)
