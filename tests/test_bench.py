"""The benchmark measures what it says: forced routings have exactly the pairs and shares reported.

Timings are never asserted; they depend on the machine and its load.
"""

import json

import pytest
import torch
from tiny_models import ARCHITECTURES
from torch import nn

import adamoe
from adamoe.bench.__main__ import main
from adamoe.bench.config import QUICK_NATIVE_SHAPES, BenchConfig
from adamoe.bench.layer import forced_routing, mixtral_loop
from adamoe.bench.native import forced_skips
from adamoe.bench.report import run_benchmark
from adamoe.bench.train import force_two_expert_fraction
from adamoe.moe.experts import Experts


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    run_benchmark(BenchConfig(quick=True, output_dir=str(out), fractions=(0.1, 0.25, 0.5), mixtral_loop=("top2",)))
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text()


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.2, 0.25, 0.5, 1.0])
def test_forced_routing_is_balanced_and_exact(fraction):
    routing = forced_routing(320, 16, fraction, seed=0)
    first, second = routing["index"].unbind(-1)
    assert torch.bincount(first, minlength=16).tolist() == [20] * 16
    assert (first != second).all()
    assert int(routing["active"][:, 1].sum()) == round(fraction * 320)
    torch.testing.assert_close(routing["weights"].sum(-1), torch.ones(320))
    assert (routing["weights"][~routing["active"]] == 0).all()


def test_mixtral_loop_computes_the_same_layer():
    torch.manual_seed(0)
    experts = Experts(num_experts=4, hidden_size=8, ffn_size=16, activation=nn.GELU(), dispatch="loop")
    with torch.no_grad():
        experts.b_in.normal_()
        experts.b_out.normal_()
    routing = forced_routing(40, 4, 0.3, seed=1)
    x = torch.randn(40, 8)
    args = (routing["index"], routing["weights"], routing["active"])
    torch.testing.assert_close(mixtral_loop(experts, x, *args), experts(x, *args))


def test_forced_share_in_a_patched_model():
    arch = next(a for a in ARCHITECTURES if a.name == "gpt2")
    model = adamoe.moeify(arch.build(), adamoe.MoEConfig(num_experts=4, gating="adaptive", threshold=0.0))
    force_two_expert_fraction(model, 0.25, seed=0)
    model(**arch.inputs(batch=2, seq_len=8, padded=False))
    assert adamoe.routing_stats(model).two_expert_fraction == pytest.approx(4 / 16)


def test_layer_rows_report_the_forced_pairs(report):
    data, _ = report
    cfg = data["config"]
    assert cfg["fractions"] == [0.0, 0.1, 0.25, 0.5, 1.0]  # top-1 and top-2 always run
    layer = [r for r in data["results"] if r["section"] == "layer"]
    tokens = cfg["tokens"]
    for shape in ("bert-base (quick)", "gpt2-medium (quick)"):
        rows = [r for r in layer if r["shape"] == shape]
        moe = {r["forced_two_expert_fraction"]: r for r in rows if r["method"] == "adamoe"}
        assert sorted(moe) == cfg["fractions"]
        for fraction, row in moe.items():
            two = round(fraction * tokens)
            assert row["pairs"] == tokens + two
            assert row["two_expert_fraction"] == two / tokens
            assert len(row["times_ms"]) == cfg["repeats"]
        assert moe[0.0]["gating"] == "top1" and moe[1.0]["gating"] == "top2"
        assert moe[1.0]["ratio_to_top2"] == 1.0
        floors = {r["pairs"]: r for r in rows if r["method"] == "floor"}
        assert set(floors) == {r["pairs"] for r in moe.values()}
        assert all(r["ratio_to_floor"] == 1.0 for r in floors.values())
        (mixtral,) = [r for r in rows if r["method"] == "mixtral-loop"]
        assert mixtral["pairs"] == 2 * tokens


def test_train_rows_report_the_forced_share(report):
    data, _ = report
    train = [r for r in data["results"] if r["section"] == "train"]
    assert [r["variant"] for r in train] == ["dense", "top1", "top2", "adaptive"] * 2
    for row in train:
        assert row["tokens"] == row["batch"] * row["seq_len"] <= data["config"]["train_tokens"]
        expected = {"dense": None, "top1": 0.0, "top2": 1.0}.get(row["variant"])
        if row["variant"] == "adaptive":
            expected = round(0.2 * row["tokens"]) / row["tokens"]
        assert row["two_expert_fraction"] == (None if expected is None else pytest.approx(expected))
        assert row["peak_mib"] > 0


def test_markdown_has_a_line_per_result(report):
    data, markdown = report
    table_rows = [line for line in markdown.splitlines() if line.startswith("| ") and "quick" in line]
    assert len(table_rows) == len(data["results"])
    assert {r["section"] for r in data["results"]} == {"layer", "train", "native"}
    assert data["environment"]["torch"] == torch.__version__


def test_command_line_writes_both_files(tmp_path, capsys):
    main(["--quick", "--sections", "layer", "--shapes", "bert-base", "--mixtral-loop", "none", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {r["method"] for r in data["results"]} == {"adamoe", "floor"}
    assert (tmp_path / "bench.md").read_text() in capsys.readouterr().out


@pytest.mark.parametrize("top_k", [2, 4, 8])
@pytest.mark.parametrize("skip", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_forced_skips_are_exact_prefixes(top_k, skip):
    decision = forced_skips(256, 16, top_k, skip, seed=0)
    index, active = decision.expert_index, decision.active
    assert torch.bincount(index[:, 0], minlength=16).tolist() == [16] * 16
    assert all(len(set(row)) == top_k for row in index.tolist())
    assert active[:, 0].all() and (active[:, 1:] <= active[:, :-1]).all()  # a prefix: the first always
    assert int((~active).sum()) == round(skip * 256 * (top_k - 1))
    assert int(decision.num_selected.sum()) == 256 + 256 * (top_k - 1) - round(skip * 256 * (top_k - 1))
    # The chosen experts lead the probabilities, in order, as the router's top-k does.
    assert torch.equal(decision.probs.topk(top_k, dim=-1).indices, index)
    torch.testing.assert_close(decision.combine_weights.sum(-1), torch.ones(256))
    assert (decision.combine_weights[~active] == 0).all()


def test_native_rows_report_the_forced_skips(tmp_path):
    fractions = (0.25, 0.5, 0.75)
    config = BenchConfig(quick=True, sections=("native",), skip_fractions=fractions, output_dir=str(tmp_path))
    data = json.loads(json.dumps(run_benchmark(config)))  # as bench.json holds it
    assert data["config"]["skip_fractions"] == [0.0, 0.25, 0.5, 0.75]  # fixed top-k always runs
    tokens = data["config"]["tokens"]
    for shape in QUICK_NATIVE_SHAPES.values():
        rows = [r for r in data["results"] if r["section"] == "native" and r["shape"] == shape.name]
        moe = {r["skip_fraction"]: r for r in rows if r["method"] == "adamoe"}
        assert sorted(moe) == data["config"]["skip_fractions"]
        optional = tokens * (shape.top_k - 1)
        for fraction, row in moe.items():
            assert (row["experts"], row["top_k"], row["hidden"], row["ffn"]) == (
                shape.num_experts,
                shape.top_k,
                shape.hidden_size,
                shape.ffn_size,
            )
            assert row["skipped_fraction"] == round(fraction * optional) / optional == fraction
            assert row["pairs"] == tokens + optional - round(fraction * optional)
            assert len(row["times_ms"]) == len(row["cpu_times_ms"]) == data["config"]["repeats"]
        assert moe[0.0]["case"] == f"top-{shape.top_k} (0% skipped)" and moe[0.0]["ratio_to_topk"] == 1.0
        floors = {r["pairs"]: r for r in rows if r["method"] == "floor"}
        assert sorted(floors) == sorted(r["pairs"] for r in moe.values())  # one floor over each case's pairs
        assert all(r["ratio_to_floor"] == 1.0 and r["ratio_to_topk"] is None for r in floors.values())
        for row in moe.values():
            assert row["ratio_to_floor"] == row["time_ms"] / floors[row["pairs"]]["time_ms"]
    assert data["targets"] == {}  # quick runs check no target
    assert "qwen3-moe (quick): hidden 32, gated FFN 12, 128 experts, k_max 8" in (tmp_path / "bench.md").read_text()


def test_native_target_is_checked_on_cpu_runs():
    from adamoe.bench.report import check_targets

    rows = [{"section": "native", "method": "adamoe", "skip_fraction": 0.5, "ratio_to_topk": r} for r in (0.6, 0.7)]
    target = check_targets(rows, "cpu")["native skip50/topk"]
    assert target == {"limit": 0.65, "worst": 0.7, "met": False}


def test_command_line_native_flags(tmp_path):
    main(
        [
            "--quick",
            "--sections",
            "native",
            "--native-shapes",
            "mixtral",
            "--skip-fractions",
            "0.5",
            "--out",
            str(tmp_path),
        ]
    )
    data = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["case"], r["pairs"]) for r in data["results"]] == [
        ("top-2 (0% skipped)", 512),
        ("50% skipped", 384),
        ("floor 384", 384),
        ("floor 512", 512),
    ]
    assert data["run"]["process_cpu_s"] > 0 and len(data["run"]["load_before"]) == 3
