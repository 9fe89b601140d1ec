"""The `adamoe` command line: typer commands that parse flags and call the Python API, nothing more."""

from __future__ import annotations

import logging

import typer

from . import analyze, bench, reproduce, run

app = typer.Typer(
    name="adamoe",
    help="Adaptive-gated mixture-of-experts fine-tuning for Hugging Face models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help: option names never cut at 80 columns, switches shown as --flag / --no-flag.
    rich_markup_mode=None,
    context_settings={"max_content_width": 100, "show_default": True},
)
app.command("finetune")(run.finetune_command)
app.command("evaluate")(run.evaluate_command)
app.command("convert")(run.convert_command)
app.command("export")(run.export_command)
app.command("tasks")(run.tasks_command)
app.command("reproduce")(reproduce.reproduce_command)
app.command("analyze")(analyze.analyze_command)
app.command("bench")(bench.bench_command)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app()
