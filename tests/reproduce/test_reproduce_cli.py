"""End to end on the smoke kit: `adamoe reproduce --table 3 --scale smoke` runs all 24 cells and writes the table
with the paper's column; a re-run trains nothing; Table 5 reuses Table 3's cells; `adamoe analyze` reads a run."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from typer.testing import CliRunner

from adamoe.cli import app
from adamoe.reproduce.experiments import load_experiments

runner = CliRunner()


@pytest.fixture(scope="module")
def table3(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    result = runner.invoke(app, ["reproduce", "--table", "3", "--scale", "smoke", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.slow
def test_table3_smoke_runs_every_cell_and_writes_the_paper_column(table3):
    out, output = table3
    assert "ran 24, skipped 0 finished" in output
    root = out / "smoke"
    cells = sorted(p.stem for p in (root / "cells").glob("*.json"))
    assert cells == sorted(e.id for e in load_experiments(table=3))
    for path in (root / "cells").glob("*.json"):
        result = json.loads(path.read_text())
        # Stamped: versions, commit, hardware, seed, plus the curve the normalised time is measured on.
        assert {"versions", "git_commit", "hardware", "seed", "loss_curve"} <= set(result)
        assert result["loss_curve_clock"] == "train_runtime" and result["loss_curve"]
    with (root / "table3.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24
    assert all(row["metric"] and row["norm_time"] and row["paper_metric"] for row in rows)
    assert {float(row["norm_time"]) for row in rows if row["cell"].endswith("-top2")} == {1.0}
    markdown = (root / "table3.md").read_text()
    assert "Paper metric" in markdown and "Smoke scale" in markdown
    assert markdown.count("\n| ") == 25  # header + 24 cells
    assert (root / "table3.png").stat().st_size > 20_000


@pytest.mark.slow
def test_a_rerun_skips_finished_cells(table3):
    out, _ = table3
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "smoke" / "cells").glob("*.json")}
    result = runner.invoke(app, ["reproduce", "--table", "3", "--scale", "smoke", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "ran 0, skipped 24 finished" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in (out / "smoke" / "cells").glob("*.json")} == stamps


@pytest.mark.slow
def test_table5_reuses_table3_cells_and_analyze_reads_a_run(table3, tmp_path):
    out, _ = table3
    args = ["reproduce", "--table", "5", "--tasks", "sst2", "--scale", "smoke", "--output-dir", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    # The top-2 reference is Table 3's (skipped), T = 0.1 is Table 3's adaptive cell (reused), four thresholds run.
    assert "ran 4, skipped 1 finished, reused 1" in result.output
    reused = json.loads((out / "smoke" / "cells" / "table5-sst2-T0.1.json").read_text())
    assert reused["reused_from"] == "table3-sst2-adaptive" and reused["experiment"]["table"] == 5

    checkpoint = out / "smoke" / "runs" / "table3-sst2-adaptive"
    result = runner.invoke(app, ["analyze", "--checkpoint", str(checkpoint), "--task", "sst2", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "analysis.md").exists() and (tmp_path / "gate_confidence.png").exists()


@pytest.mark.slow
def test_drop_models_deletes_the_weights_of_the_cells_it_runs_and_nothing_else(table3, tmp_path):
    out, _ = table3
    # A results root with Table 3's sst2 cells finished except top-1, whose run is the one this call trains.
    root = tmp_path / "smoke"
    shutil.copytree(out / "smoke" / "cells", root / "cells")
    shutil.copytree(out / "smoke" / "runs" / "table3-sst2-top2", root / "runs" / "table3-sst2-top2")
    (root / "cells" / "table3-sst2-top1.json").unlink()
    args = ["reproduce", "--table", "3", "--tasks", "sst2", "--scale", "smoke", "-o", str(tmp_path), "--drop-models"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "ran 1, skipped 3 finished" in result.output

    ran = root / "runs" / "table3-sst2-top1"
    kept = {p.name for p in ran.iterdir()}
    assert not [name for name in kept if name.endswith(".safetensors") or name.startswith("checkpoint-")]
    assert {"results.json", "trainer_log.jsonl", "run_config.json", "config.json"} <= kept
    cell = json.loads((root / "cells" / "table3-sst2-top1.json").read_text())
    assert cell["loss_curve"] and cell["metrics"] == json.loads((ran / "results.json").read_text())["metrics"]
    # A skipped cell's run keeps what it had.
    assert (root / "runs" / "table3-sst2-top2" / "model.safetensors").exists()


def test_table_r_refuses_a_task_it_has_no_cells_for(tmp_path):
    result = runner.invoke(app, ["reproduce", "--table", "R", "--tasks", "squad", "-o", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "covers sst2, wikitext; it has no cells for squad" in " ".join(result.output.split())
    assert not (tmp_path / "r").exists()
