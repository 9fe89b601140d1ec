"""`adamoe evaluate --sweep`: one checkpoint at several values of its rule's parameter, without retraining
(adamoe/run/sweep.py). The ends are checked against their definition (T = 0: one expert a token; T = 1: k_max)
and against a separate evaluation of the same weights with fixed top-2 routing."""

import json

from typer.testing import CliRunner

from adamoe.cli import app

runner = CliRunner()


def test_a_sweep_writes_the_frontier_and_its_ends_are_top1_and_top2(smoke_kit, tmp_path):
    sst2, run = smoke_kit["sst2"], tmp_path / "run"
    args = ["--task", "sst2", "--model", str(sst2.model_dir), "--train-file", str(sst2.train_file)]
    args += ["--validation-file", str(sst2.validation_file), "--max-steps", "3", "--num-experts", "4", "-o", str(run)]
    assert runner.invoke(app, ["finetune", *args]).exit_code == 0
    evaluate = ["evaluate", "--task", "sst2", "--checkpoint", str(run), "--validation-file", str(sst2.validation_file)]
    result = runner.invoke(app, [*evaluate, "--sweep", "0,0.1,0.3,1"])
    assert result.exit_code == 0, result.output
    frontier = json.loads((run / "sweep" / "frontier.json").read_text())
    rows = frontier["rows"]
    assert [r["threshold"] for r in rows] == [0.0, 0.1, 0.3, 1.0] and {r["rule"] for r in rows} == {"gap"}
    experts = [r["experts_per_token"] for r in rows]
    assert experts[0] == 1.0 and experts[-1] == 2.0 and experts == sorted(experts)
    assert {p.name for p in (run / "sweep").iterdir()} >= {"frontier.json", "frontier.md", "frontier.png"}

    # T = 1 routes exactly as fixed top-2 does: the same accuracy as a separate top-2 evaluation.
    assert runner.invoke(app, [*evaluate, "--gating", "top2"]).exit_code == 0
    top2 = json.loads((run / "eval" / "eval_results.json").read_text())
    assert rows[-1]["accuracy"] == top2["accuracy"]

    top_p = runner.invoke(app, [*evaluate, "--sweep", "0,1", "--rule", "top_p", "-o", str(tmp_path / "p")])
    assert top_p.exit_code == 0, top_p.output
    assert [r["rule"] for r in json.loads((tmp_path / "p" / "frontier.json").read_text())["rows"]] == ["top_p"] * 2
    for bad, says in [("0,2", "values in [0, 1]"), ("a,b", "comma-separated numbers")]:
        result = runner.invoke(app, [*evaluate, "--sweep", bad, "-o", str(tmp_path / "bad")])
        assert result.exit_code == 2 and says in " ".join(result.output.split())
    assert runner.invoke(app, [*evaluate, "--sweep", "0,1"]).exit_code == 2  # its earlier report: --overwrite
