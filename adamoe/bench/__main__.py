"""`python -m adamoe.bench`: the same command as `adamoe bench` (one flag per `BenchConfig` field)."""

from __future__ import annotations

import typer

from ..cli.bench import bench_command


def main(argv: list[str] | None = None) -> None:
    """`python -m adamoe.bench`: the same command as `adamoe bench` (one flag per `BenchConfig` field)."""

    app = typer.Typer(add_completion=False, rich_markup_mode=None)
    app.command()(bench_command)
    command = typer.main.get_command(app)
    command.main(args=argv, prog_name="python -m adamoe.bench", standalone_mode=argv is None)


if __name__ == "__main__":
    main()
