"""Tables generated from fixture result JSONs: our columns from the cells, the paper's from the data file, the
times normalised by the documented rule. Expected values are worked out by hand in each test."""

from __future__ import annotations

import csv
import json

import pytest

from adamoe.reproduce.runner import cell_set
from adamoe.reproduce.tables import paper_results, write_table


def write_cell(root, cell_id, *, metric, metric_name, curve, flops=None, two=None, scale="smoke"):
    path = root / "cells" / f"{cell_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "scale": scale,
        "metrics": {metric_name: metric},
        "flops_vs_top2": flops,
        "two_expert_fraction": two,
        "target_loss_smoothing": 0.0,
        "loss_curve": [{"step": i + 1, "time_s": t, "task_loss": loss} for i, (t, loss) in enumerate(curve)],
        "git_commit": "abc123",
        "hardware": {"cpu_count": 2},
        "versions": {"torch": "x"},
        "seed": 42,
    }
    path.write_text(json.dumps(result))


def read_csv(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_table3_from_fixture_results(tmp_path):
    # sst2: target = worst final loss = dense's 0.5; times to it: top2 4 s, top1 3 s, adaptive 2 s, dense 1 s.
    write_cell(tmp_path, "table3-sst2-top2", metric=0.90, metric_name="accuracy",
               curve=[(2, 0.9), (4, 0.3)], flops=1.0, two=1.0)  # fmt: skip
    write_cell(tmp_path, "table3-sst2-top1", metric=0.85, metric_name="accuracy",
               curve=[(1.5, 0.8), (3, 0.4)], flops=0.5, two=0.0)  # fmt: skip
    write_cell(tmp_path, "table3-sst2-adaptive", metric=0.91, metric_name="accuracy",
               curve=[(1, 0.7), (2, 0.45)], flops=0.6, two=0.2)  # fmt: skip
    write_cell(tmp_path, "table3-sst2-dense", metric=0.88, metric_name="accuracy", curve=[(1, 0.5)])
    # wikitext: only top-2 has run.
    write_cell(tmp_path, "table3-wikitext-top2", metric=20.0, metric_name="perplexity",
               curve=[(5, 3.0)], flops=1.0, two=1.0)  # fmt: skip
    outputs = write_table(3, tmp_path, cell_set(3, ["sst2", "wikitext"]))

    rows = read_csv(outputs["csv"])
    assert [(r["task"], r["cell"].rsplit("-", 1)[1]) for r in rows] == [
        ("sst2", "dense"), ("sst2", "top2"), ("sst2", "top1"), ("sst2", "adaptive"),
        ("wikitext", "dense"), ("wikitext", "top2"), ("wikitext", "top1"), ("wikitext", "adaptive"),
    ]  # fmt: skip
    by_cell = {r["cell"]: r for r in rows}
    times = {s: float(by_cell[f"table3-sst2-{s}"]["norm_time"]) for s in ("top2", "top1", "adaptive", "dense")}
    assert times == pytest.approx({"top2": 1.0, "top1": 0.75, "adaptive": 0.5, "dense": 0.25})
    assert float(by_cell["table3-sst2-dense"]["target_loss"]) == 0.5
    # Dense runs one FFN per token: half of top-2's expert FLOPs, by definition.
    assert float(by_cell["table3-sst2-dense"]["flops_vs_top2"]) == 0.5
    # Paper columns: Table 3 as printed, FLOPs over its top-2 row, two-expert share from the text.
    adaptive = by_cell["table3-sst2-adaptive"]
    assert (float(adaptive["paper_metric"]), float(adaptive["paper_norm_time"])) == (0.919, 0.77)
    assert float(adaptive["paper_flops_vs_top2"]) == pytest.approx(2.30 / 3.28)
    assert float(adaptive["paper_two_expert_fraction"]) == 0.113
    assert float(by_cell["table3-wikitext-top1"]["paper_metric"]) == 16.5
    assert by_cell["table3-wikitext-top1"]["metric"] == ""  # not run: empty, never invented

    markdown = outputs["markdown"].read_text()
    assert "**Smoke scale**" in markdown and "NOT paper-scale" in markdown
    assert (
        "| sst2 (accuracy) | Adaptive gating (T=0.1) | 0.50x | 0.77x | 0.60 | 0.70 | 20.0% | 11.3% | 0.910 | 0.919 |"
        in markdown
    )
    assert "| wikitext (perplexity) | Top-1 gating | — | 1.14x | — | 0.69 | — | — | — | 16.50 |" in markdown
    assert "cells with results: 5 of 8" in markdown and "abc123" in markdown
    assert outputs["plot"].stat().st_size > 10_000


def test_table5_takes_t01_from_table3_and_normalises_to_top2(tmp_path):
    write_cell(tmp_path, "table3-sst2-top2", metric=0.9, metric_name="accuracy", curve=[(2.0, 1.0), (4.0, 0.5)])
    for threshold, seconds in ((0.05, 1.0), (0.1, 2.0), (0.2, 3.0), (0.3, 4.0), (0.4, 6.0)):
        write_cell(tmp_path, f"table5-sst2-T{threshold}", metric=0.9, metric_name="accuracy",
                   curve=[(seconds, 0.6)], flops=0.5 + threshold, two=threshold)  # fmt: skip
    rows = {r["label"]: r for r in read_csv(write_table(5, tmp_path, cell_set(5, ["sst2"]))["csv"])}
    # Target 0.6 (the worst final loss): top-2 reaches it at 4 s.
    assert {label: float(r["norm_time"]) for label, r in rows.items()} == pytest.approx(
        {"T=0.05": 0.25, "T=0.1": 0.5, "T=0.2": 0.75, "T=0.3": 1.0, "T=0.4": 1.5}
    )
    assert (float(rows["T=0.1"]["paper_metric"]), float(rows["T=0.1"]["paper_norm_time"])) == (0.919, 0.77)
    assert (float(rows["T=0.2"]["paper_metric"]), float(rows["T=0.2"]["paper_norm_time"])) == (0.918, 0.77)
    assert (float(rows["T=0.05"]["paper_metric"]), float(rows["T=0.05"]["paper_norm_time"])) == (0.912, 1.02)


def test_table6_inflation_and_metric_change(tmp_path):
    write_cell(tmp_path, "table6-squad-curriculum", metric=70.0, metric_name="f1", curve=[(5.0, 1.0), (10.0, 0.4)])
    write_cell(tmp_path, "table6-squad-no-curriculum", metric=69.5, metric_name="f1", curve=[(6.0, 0.8), (12.0, 0.5)])
    (row,) = read_csv(write_table(6, tmp_path, cell_set(6, ["squad"]))["csv"])
    # Target 0.5: with the curriculum at 10 s, without at 12 s -> 20% more time; F1 -0.5.
    assert float(row["time_inflation"]) == pytest.approx(0.2)
    assert float(row["metric_delta"]) == pytest.approx(-0.5)
    assert (float(row["paper_time_inflation"]), float(row["paper_metric_delta"])) == (0.09, -0.21)


def test_paper_data_has_its_source_and_every_cell_of_the_tables():
    paper = paper_results()
    assert paper["source"]["arxiv"] == "2310.07188" and "EMNLP 2023" in paper["source"]["citation"]
    assert len(paper["table3"]) == 24 and len(paper["table5"]) == 24 and len(paper["table6"]) == 6
    # Spot checks against the printed tables.
    assert {(r["task"], r["scheme"]): r["metric"] for r in paper["table3"]}[("wmt19", "top1")] == 39.5
    assert {(r["task"], r["threshold"]): r["norm_training_time"] for r in paper["table5"]}[
        ("cnn_dailymail", 0.3)
    ] == 1.05
    assert "cnn_dailymail" not in paper["two_expert_fraction"]  # the paper states none: left empty


def test_table_r_reads_the_measured_budget_and_flags_a_rule_that_missed_it(tmp_path):
    # Target loss = the worst final loss, 0.5 (top-1's); top-2 reaches it at 4 s.
    write_cell(tmp_path, "tableR-sst2-top2", metric=0.90, metric_name="accuracy", curve=[(4, 0.3)], flops=1.0)
    write_cell(tmp_path, "tableR-sst2-top1", metric=0.85, metric_name="accuracy", curve=[(2, 0.5)], flops=0.5)
    for rule, budget, measured, layers, seconds in [
        ("gap", 1.25, 1.26, [1.1, 1.42], 3.0),
        ("top_p", 1.5, 1.45, [1.3, 1.6], 3.6),  # 0.05 off its budget: not matched
    ]:
        cell_id = f"tableR-sst2-{rule}-{budget}"
        write_cell(tmp_path, cell_id, metric=0.88, metric_name="accuracy", curve=[(seconds, 0.4)], flops=0.7)
        path = tmp_path / "cells" / f"{cell_id}.json"
        result = json.loads(path.read_text())
        result["eval_experts_per_token"] = measured
        result["eval_experts_per_token_per_layer"] = dict(zip(["layer.0", "layer.1"], layers, strict=True))
        path.write_text(json.dumps(result))
    outputs = write_table("R", tmp_path, cell_set("R", ["sst2"]))

    rows = {r["cell"]: r for r in read_csv(outputs["csv"])}
    gap, top_p = rows["tableR-sst2-gap-1.25"], rows["tableR-sst2-top_p-1.5"]
    assert (float(gap["experts_per_token"]), float(gap["layer_min"]), float(gap["layer_max"])) == (1.26, 1.1, 1.42)
    assert (gap["matched"], top_p["matched"]) == ("True", "False")
    assert float(gap["norm_time"]) == pytest.approx(0.75) and float(gap["train_experts_per_token"]) == 1.4
    assert rows["tableR-sst2-top1"]["budget"] == "1.0" and rows["tableR-sst2-expert_threshold-1.5"]["metric"] == ""
    markdown = outputs["markdown"].read_text()
    assert "which these rows miss: top-p (DTop-p) @ 1.5 (sst2)." in markdown
    assert "| sst2 (accuracy) | gap (paper) @ 1.25 | 1.26 | 1.10 | 1.42 | 1.40 | 0.75x | 0.880 |" in markdown
    assert outputs["plot"].stat().st_size > 0
