"""The `adamoe` command line: typer commands that parse flags and call the Python API, nothing more."""

from __future__ import annotations

import logging

import typer

from . import reproduce, run

app = typer.Typer(
    name="adamoe",
    help="Adaptive-gated mixture-of-experts fine-tuning for Hugging Face models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("finetune")(run.finetune_command)
app.command("evaluate")(run.evaluate_command)
app.command("convert")(run.convert_command)
app.command("tasks")(run.tasks_command)
app.command("reproduce")(reproduce.reproduce_command)
app.command("analyze")(reproduce.analyze_command)


@app.command(
    "bench",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def bench_command(ctx: typer.Context) -> None:
    """Speed and memory benchmark of MoE layers and training steps (`adamoe bench --help` lists its flags)."""
    from ..bench import main as bench_main  # flags are generated from BenchConfig there: one definition

    bench_main(ctx.args)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app()
