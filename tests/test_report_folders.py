"""Every command that writes a folder keeps the user's files: `analyze` and `bench` refuse the current folder, a
folder of other files, and replacing their own earlier report without --overwrite (exit 2, nothing written); the
bench's bad settings name the flag; `evaluate` refuses --gating dense and records the routing it evaluated."""

import json

import pytest
from typer.testing import CliRunner

from adamoe.cli import app

runner = CliRunner()


def _bench(out, *extra):
    return runner.invoke(app, ["bench", "--quick", "--sections", "layer", "--out", str(out), *extra])


def test_bench_writes_a_new_folder_and_replaces_its_report_only_with_overwrite(tmp_path):
    out = tmp_path / "bench"
    assert _bench(out).exit_code == 0
    first = (out / "bench.json").read_text()
    result = _bench(out)
    assert result.exit_code == 2 and "already holds a report" in result.output and "--overwrite" in result.output
    assert (out / "bench.json").read_text() == first  # untouched
    assert _bench(out, "--overwrite").exit_code == 0


@pytest.mark.parametrize(
    ("prepare", "says"),
    [
        (lambda p: (p.mkdir(), (p / "notes.txt").write_text("mine")), "holds files this command does not write"),
        (lambda p: p.write_text("a file"), "is a file, not a folder"),
    ],
    ids=["user-files", "a-file"],
)
def test_bench_refuses_a_folder_it_does_not_own(tmp_path, prepare, says):
    out = tmp_path / "out"
    prepare(out)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = _bench(out, "--overwrite")
    assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_bench_refuses_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _bench(".", "--overwrite")
    assert result.exit_code == 2 and "current folder" in result.output and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--fractions", "abc"], "--fractions takes float values"),
        (["--fractions", "2"], "--fractions must lie in [0, 1]"),
        (["--dtype", "bogus"], "--dtype must be one of float32, bfloat16, float16"),
        (["--sections", "nope"], "--sections must be in"),
    ],
)
def test_bench_settings_are_refused_by_flag(tmp_path, args, says):
    result = _bench(tmp_path / "out", *args)
    assert result.exit_code == 2 and says in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_analyze_and_evaluate_guard_their_folders_and_say_what_they_evaluated(smoke_kit, tmp_path):
    sst2 = smoke_kit["sst2"]
    run = tmp_path / "run"
    args = ["--task", "sst2", "--model", str(sst2.model_dir), "--train-file", str(sst2.train_file)]
    args += ["--validation-file", str(sst2.validation_file), "--max-steps", "2", "--num-experts", "4", "-o", str(run)]
    assert runner.invoke(app, ["finetune", *args]).exit_code == 0
    user = tmp_path / "mine"
    user.mkdir()
    (user / "analysis.md").write_text("my notes")
    analyze = ["analyze", "--task", "sst2", "--checkpoint", str(run)]
    result = runner.invoke(app, [*analyze, "-o", str(user)])
    assert result.exit_code == 2 and "already holds a report" in result.output
    assert (user / "analysis.md").read_text() == "my notes"
    assert runner.invoke(app, [*analyze]).exit_code == 0
    assert runner.invoke(app, [*analyze]).exit_code == 2  # its own earlier report: --overwrite to replace it
    assert runner.invoke(app, [*analyze, "--overwrite"]).exit_code == 0

    evaluate = ["evaluate", "--task", "sst2", "--checkpoint", str(run), "--validation-file", str(sst2.validation_file)]
    result = runner.invoke(app, [*evaluate, "--gating", "dense"])
    assert result.exit_code == 2 and "no dense FFNs left" in " ".join(result.output.split())
    assert runner.invoke(app, [*evaluate, "--gating", "top2"]).exit_code == 0
    recorded = json.loads((run / "eval" / "eval_results.json").read_text())
    assert recorded["gating"] == "top2" and recorded["moe"]["gating"] == "top2"


def test_reproduce_refuses_a_results_root_holding_other_files(tmp_path):
    root = tmp_path / "out" / "smoke"
    root.mkdir(parents=True)
    (root / "notes.txt").write_text("mine")
    result = runner.invoke(
        app, ["reproduce", "--table", "3", "--scale", "smoke", "--tasks", "sst2", "-o", str(tmp_path / "out")]
    )
    assert result.exit_code == 2 and "holds files this command does not write: notes.txt" in " ".join(
        result.output.split()
    )
    assert [p.name for p in root.iterdir()] == ["notes.txt"]
