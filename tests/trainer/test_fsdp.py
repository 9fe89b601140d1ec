"""Fully sharded fine-tuning (FSDP2) through the Trainer: `torchrun --nproc_per_node 2` (gloo, CPU) runs the
unchanged `finetune()` with `fsdp: true` and the `fsdp_config` of `configs/accelerate/fsdp.yaml` in the run
config's `training:` section (see `fsdp_worker.py`, which records what each rank held and lifts accelerate's
accelerator-only gate for FSDP).

Checked: each rank holds half of every stacked expert weight, `(4, 32, 64)` -> `(2, 32, 64)`; the checkpoints
and the final model are ordinary adamoe checkpoints (full state dict) that `adamoe.from_pretrained` loads to
exactly the weights the ranks held; `--resume` under FSDP continues from a checkpoint and ends where the
uninterrupted run ended; a NaN in one rank's shard stops both ranks before the checkpoint is written. Without
the worker's gate lifted (stock accelerate on CPU), FSDP stays off and adamoe warns.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from launch import torchrun
from tiny_run import write_model_folder, write_sst2

import adamoe
from adamoe.trainer.checkpointing import is_finite_checkpoint


def _fsdp2_unavailable() -> str | None:
    """Why FSDP2 cannot run here, or None."""
    if not torch.distributed.is_available():
        return "torch was built without torch.distributed"
    if not torch.distributed.is_gloo_available():
        return "torch.distributed has no gloo backend (needed for FSDP on CPU)"
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError as err:
        return f"FSDP2 (torch.distributed.fsdp.fully_shard) is unavailable: {err}"
    return None


pytestmark = pytest.mark.skipif(_fsdp2_unavailable() is not None, reason=str(_fsdp2_unavailable()))

WORKER = Path(__file__).with_name("fsdp_worker.py")
FSDP_YAML = Path(adamoe.__file__).parent / "configs" / "accelerate" / "fsdp.yaml"
TRAIN, DEV, BATCH, EPOCHS, WORLD = 16, 8, 4, 3, 2
STEPS_PER_EPOCH = TRAIN // (BATCH * WORLD)  # 2: checkpoints after steps 2, 4 and 6
EXPERTS, HIDDEN, FFN = 4, 32, 64  # tiny_run's BERT patched with 4 experts


def _run_config(tmp_path: Path, *, training: dict | None = None, **extra: object) -> Path:
    # The example config's FSDP section as the Trainer's fsdp_config (transformers drops the `fsdp_` prefixes).
    # Not its bf16: CPU runs stay in float32, so the resumed run can be compared exactly.
    fsdp_config = yaml.safe_load(FSDP_YAML.read_text())["fsdp_config"]
    config = {
        "task": "sst2",
        "model": str(tmp_path / "model"),
        "moe": {"num_experts": EXPERTS, "threshold": 0.2, "router_init_std": 1.0, "expert_init": "random"},
        "data": {"train_file": str(tmp_path / "train.tsv"), "validation_file": str(tmp_path / "dev.tsv")},
        "training": {
            "num_train_epochs": EPOCHS,
            "per_device_train_batch_size": BATCH,
            "per_device_eval_batch_size": BATCH,
            "learning_rate": 1e-3,
            "curriculum": True,
            "seed": 0,
            "use_cpu": True,
            "disable_tqdm": True,
            "save_total_limit": None,  # keep checkpoint-2, -4 and -6
            "fsdp": True,
            "fsdp_config": fsdp_config,
            **(training or {}),
        },
        "output_dir": str(tmp_path / "run"),
        "keep_checkpoints": True,  # the tests load them
        **extra,
    }
    path = tmp_path / f"run-{len(list(tmp_path.glob('run-*.json')))}.json"
    path.write_text(json.dumps(config))
    return path


def _launch(run_config: Path, report_dir: Path, *mode: str) -> tuple[dict[int, dict], str]:
    """The ranks' reports and the launcher's output."""
    report_dir.mkdir()
    output = torchrun(WORKER, run_config, report_dir, *mode, world=WORLD)
    return {rank: json.loads((report_dir / f"rank{rank}.json").read_text()) for rank in range(WORLD)}, output


def _inputs(tmp_path: Path) -> Path:
    write_model_folder(tmp_path / "model")
    write_sst2(tmp_path / "train.tsv", TRAIN, seed=0)
    write_sst2(tmp_path / "dev.tsv", DEV, seed=1)
    return tmp_path


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict], dict[int, dict]]:
    """A run of 6 steps, then the same run resumed from checkpoint-4 as if it had been killed in step 5."""
    tmp_path = _inputs(tmp_path_factory.mktemp("fsdp"))
    full, _ = _launch(_run_config(tmp_path), tmp_path / "full")
    last = tmp_path / "run" / f"checkpoint-{EPOCHS * STEPS_PER_EPOCH}"
    shutil.copytree(last, tmp_path / "full" / last.name)  # kept for the comparison below
    shutil.rmtree(last)
    resumed, _ = _launch(_run_config(tmp_path, resume=True), tmp_path / "resumed")
    return tmp_path, full, resumed


def _assert_same_weights(model: torch.nn.Module, held: dict[str, torch.Tensor]) -> None:
    weights = dict(model.named_parameters())
    assert weights.keys() == held.keys()
    for name, tensor in held.items():
        assert torch.equal(weights[name].detach(), tensor), name


@pytest.mark.slow
def test_each_rank_holds_half_of_every_expert_weight(fsdp_runs: tuple[Path, dict, dict]) -> None:
    tmp_path, ranks, _ = fsdp_runs
    full = torch.load(tmp_path / "full" / "rank0-final.pt", weights_only=True)
    for rank, report in ranks.items():
        assert report["fsdp_enabled"] and report["wrapped"].startswith("FSDP")  # fully_shard, not DDP
        assert len(report["experts"]) == 2 * 2  # w_in and w_out of both layers
        for name, shard in report["experts"].items():
            expected = [EXPERTS, HIDDEN, FFN] if name.endswith("w_in") else [EXPERTS, FFN, HIDDEN]
            assert shard["dtensor"] and shard["global_shape"] == expected
            assert shard["local_shape"] == [EXPERTS // WORLD, *expected[1:]]
            # Rank r holds experts 2r and 2r + 1: FSDP2 shards dim 0.
            half = full[name][rank * EXPERTS // WORLD : (rank + 1) * EXPERTS // WORLD]
            assert shard["local_sum"] == pytest.approx(half.double().sum().item(), rel=1e-12)
    assert ranks[0]["results"]["global_steps"] == EPOCHS * STEPS_PER_EPOCH


@pytest.mark.slow
def test_checkpoints_and_the_model_are_ordinary_adamoe_checkpoints(fsdp_runs: tuple[Path, dict, dict]) -> None:
    tmp_path, _, _ = fsdp_runs
    for step in (STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH):
        held = [torch.load(tmp_path / "full" / f"rank{r}-step{step}.pt", weights_only=True) for r in range(WORLD)]
        assert held[0].keys() == held[1].keys() and all(torch.equal(held[0][k], held[1][k]) for k in held[0])
        checkpoint = tmp_path / ("full" if step == EPOCHS * STEPS_PER_EPOCH else "run") / f"checkpoint-{step}"
        assert "adamoe" in json.loads((checkpoint / "config.json").read_text())  # the MoE config travels along
        model = adamoe.from_pretrained(str(checkpoint))  # full weights in model.safetensors, no shards to merge
        assert [type(block.experts.w_in) for _, block in adamoe.moe_blocks(model)] == [torch.nn.Parameter] * 2
        _assert_same_weights(model, held[0])
    assert not (tmp_path / "run" / ".adamoe-partial").exists()


@pytest.mark.slow
def test_resume_checks_the_fsdp_optimizer_state_for_nan(fsdp_runs: tuple[Path, dict, dict]) -> None:
    tmp_path, _, _ = fsdp_runs
    checkpoint = tmp_path / "run" / f"checkpoint-{STEPS_PER_EPOCH}"
    assert is_finite_checkpoint(checkpoint)
    # FSDP saves the full optimizer state as optimizer.bin (keyed by parameter name), not optimizer.pt.
    broken = tmp_path / "nan-optimizer"
    shutil.copytree(checkpoint, broken)
    state = torch.load(broken / "optimizer.bin", weights_only=True)
    next(iter(state["state"].values()))["exp_avg"].view(-1)[0] = float("nan")
    torch.save(state, broken / "optimizer.bin")
    assert not (broken / "optimizer.pt").exists() and not is_finite_checkpoint(broken)


@pytest.mark.slow
def test_resume_under_fsdp_continues_from_the_checkpoint(fsdp_runs: tuple[Path, dict, dict]) -> None:
    tmp_path, full, resumed = fsdp_runs
    skipped = 2 * STEPS_PER_EPOCH  # checkpoint-4
    for rank in range(WORLD):
        # Only steps 5 and 6 ran again, on the batches the uninterrupted run gave them.
        assert resumed[rank]["batches"] == full[rank]["batches"][skipped:]
        assert resumed[rank]["fsdp_enabled"]
        assert resumed[rank]["results"]["global_steps"] == EPOCHS * STEPS_PER_EPOCH
    # train_loss is the mean over ranks and steps, the same on every rank, and covers the steps before the resume.
    losses = [run[r]["results"]["train_loss"] for run in (full, resumed) for r in range(WORLD)]
    assert losses == pytest.approx([losses[0]] * len(losses), rel=1e-6)
    # It ends with the uninterrupted run's weights, and saves what the ranks held as an ordinary model.
    end = torch.load(tmp_path / "full" / "rank0-final.pt", weights_only=True)
    held = torch.load(tmp_path / "resumed" / "rank0-final.pt", weights_only=True)
    assert held.keys() == end.keys()
    for name, tensor in held.items():
        torch.testing.assert_close(tensor, end[name], rtol=0, atol=1e-6, msg=name)
    _assert_same_weights(adamoe.from_pretrained(str(tmp_path / "run")), held)


@pytest.mark.slow
def test_a_nan_in_one_ranks_shard_stops_every_rank_before_the_checkpoint(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tmp_path = _inputs(tmp_path_factory.mktemp("fsdp-nan"))
    ranks, _ = _launch(_run_config(tmp_path, training={"num_train_epochs": 1}), tmp_path / "report", "poison")
    for report in ranks.values():  # rank 0's own shards are finite: it learns of the NaN from the reduction
        assert f"checkpoint-{STEPS_PER_EPOCH} was not saved" in report["error"]
    assert not list((tmp_path / "run").glob("checkpoint-*"))


@pytest.mark.slow
def test_fsdp_that_accelerate_does_not_enable_is_said(tmp_path_factory: pytest.TempPathFactory) -> None:
    # On CPU, stock accelerate leaves FSDP off and the Trainer trains plain DDP without a word: adamoe says so.
    tmp_path = _inputs(tmp_path_factory.mktemp("fsdp-cpu"))
    ranks, output = _launch(_run_config(tmp_path, training={"max_steps": 1}), tmp_path / "report", "stock")
    assert [ranks[r]["wrapped"] for r in range(WORLD)] == ["DistributedDataParallel"] * WORLD
    assert "fsdp is set, but accelerate did not enable FSDP" in output


@pytest.mark.slow
def test_resuming_an_fsdp_checkpoint_without_fsdp_says_how_and_keeps_the_run(
    fsdp_runs: tuple[Path, dict, dict], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from adamoe.cli import app

    base, _, _ = fsdp_runs
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    config = json.loads(_run_config(base, resume=True).read_text())
    config["output_dir"] = str(run)
    config["training"] = {k: v for k, v in config["training"].items() if k not in ("fsdp", "fsdp_config")}
    (tmp_path / "resume.json").write_text(json.dumps(config))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    result = CliRunner().invoke(app, ["finetune", "--config", str(tmp_path / "resume.json")], terminal_width=200)
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert "was written by an FSDP run" in result.output and "--model" in result.output
    assert "Traceback" not in result.output
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
