"""The output folder through `adamoe finetune` and `adamoe convert`, as a user (or a fault) would meet it: only a
run folder is replaced, and only its own files; nothing is touched before every input is checked; one run per
folder at a time; no non-finite checkpoint; no secrets in files; modes that honour the umask."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_run import write_model_folder, write_sst2
from transformers import AutoModelForSequenceClassification, PreTrainedModel
from typer.testing import CliRunner

from adamoe import MoEConfig
from adamoe.cli import app
from adamoe.run.models import convert
from adamoe.run.output_dir import LOCK_NAME, RunLock
from adamoe.trainer.checkpointing import last_usable_checkpoint


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("output_dir")
    return {
        "root": root,
        "model": write_model_folder(root / "model"),
        "train": write_sst2(root / "train.tsv", 8),
        "dev": write_sst2(root / "dev.tsv", 4, seed=1),
    }


def _finetune(kit: dict[str, Path], out: Path | str, *flags: str) -> Any:
    args = [
        *("finetune", "--task", "sst2", "--model", str(kit["model"]), "--num-experts", "4"),
        *("--train-file", str(kit["train"]), "--validation-file", str(kit["dev"]), "--output-dir", str(out)),
        *("--batch-size", "8", *flags),
    ]
    if "--epochs" not in flags:
        args += ["--max-steps", "1"]
    return CliRunner().invoke(app, args)


def _message(result: Any) -> str:
    assert result.exit_code == 2, result.output
    assert result.output.count("Error: ") == 1 and "Traceback" not in result.output
    return " ".join(result.output.split("Error: ", 1)[1].split())


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"/" for p in sorted(folder.rglob("*"))}


def _fake_home(folder: Path) -> Path:
    (folder / ".ssh").mkdir(parents=True)
    (folder / ".ssh" / "id_rsa").write_text("secret key")
    (folder / "Documents").mkdir()
    (folder / "Documents" / "thesis.tex").write_text("chapter 1")
    (folder / ".bashrc").write_text("export PATH")
    return folder


def test_overwrite_never_empties_a_folder_that_is_not_a_run(kit: dict[str, Path]) -> None:
    home = _fake_home(kit["root"] / "home")
    before = _snapshot(home)
    message = _message(_finetune(kit, home, "--overwrite"))
    assert "holds no adamoe run" in message and ".bashrc, .ssh/, Documents/" in message
    assert _snapshot(home) == before

    notes = kit["root"] / "notes"
    (notes / "mydata").mkdir(parents=True)
    (notes / "notes.txt").write_text("todo")
    message = _message(_finetune(kit, notes))
    assert (
        "holds no adamoe run" in message and "mydata/, notes.txt" in message and "already holds a run" not in message
    )


def test_the_current_folder_home_root_and_parents_are_refused_outright(
    kit: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project" / "sub"
    project.mkdir(parents=True)
    (project / "train.py").write_text("print(1)")
    (project / "run_config.json").write_text("{}")  # even a folder that looks like a run
    monkeypatch.chdir(project)
    before = _snapshot(tmp_path)
    for out in (".", "..", str(tmp_path), "/"):
        assert "current folder or one of its parents" in _message(_finetune(kit, out, "--overwrite"))
    monkeypatch.setenv("HOME", str(tmp_path / "project" / "sub" / "home"))
    (project / "home").mkdir()
    assert "home folder" in _message(_finetune(kit, "~", "--overwrite"))
    assert _snapshot(tmp_path) == {**before, "project/sub/home": b"/"}


def test_overwrite_replaces_only_a_run_folder_with_nothing_else_in_it(kit: dict[str, Path]) -> None:
    out = kit["root"] / "run"
    assert _finetune(kit, out, "--epochs", "1").exit_code == 0
    first = json.loads((out / "results.json").read_text())
    (out / "my-notes.txt").write_text("keep me")
    before = _snapshot(out)
    message = _message(_finetune(kit, out, "--overwrite"))
    assert "also files a run does not write: my-notes.txt" in message
    assert _snapshot(out) == before

    (out / "my-notes.txt").unlink()
    # A bad setting is refused before the previous run is removed: nothing lost.
    before = _snapshot(out)
    for bad in (("--lr", "-1"), ("--batch-size", "0"), ("--lr", "nan")):
        _message(_finetune(kit, out, "--overwrite", *bad))
        assert _snapshot(out) == before
    result = _finetune(kit, out, "--overwrite", "--seed", "7")
    assert result.exit_code == 0, result.output
    second = json.loads((out / "results.json").read_text())
    assert (first["seed"], second["seed"]) == (42, 7)
    # No lock or staging files are left behind; the record of what the run wrote stays (for a later --overwrite).
    assert [p.name for p in out.glob(".adamoe*")] == [".adamoe-files.json"]


def test_a_second_run_into_a_locked_folder_fails_at_once_naming_the_holder(kit: dict[str, Path]) -> None:
    out = kit["root"] / "locked"
    with RunLock(out):
        message = _message(_finetune(kit, out))
    assert f"pid {os.getpid()}" in message and "is writing" in message
    assert not (out / "run_config.json").exists()


def test_the_lock_of_a_killed_run_is_stale_and_taken_over(kit: dict[str, Path]) -> None:
    out = kit["root"] / "stale"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from adamoe.run.output_dir import RunLock; lock = RunLock(sys.argv[1]); "
            "lock.__enter__(); print('held', flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    assert f"pid {holder.pid}" in _message(_finetune(kit, out))
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / LOCK_NAME).exists()  # what a killed run leaves
    result = _finetune(kit, out)
    assert result.exit_code == 0, result.output


def test_files_honour_the_umask_and_secrets_stay_out(kit: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "task: sst2\ntraining:\n  learning_rate: 3e-5\n  hub_token: hf_SECRET123\n  save_strategy: steps\n"
        "  save_steps: 1\n"
    )
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        result = _finetune(kit, out, "--config", str(config), "--keep-checkpoints")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "run_config.json").read_text())
    assert saved["training"]["learning_rate"] == pytest.approx(3e-5)  # PyYAML reads 3e-5 as a string
    assert "hub_token" not in saved["training"]
    for path in out.rglob("*"):
        if path.suffix in (".json", ".txt", ".jsonl", ".md", ".yaml"):
            assert "hf_SECRET123" not in path.read_text(), path
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: {oct(mode)}"
    assert (out / "checkpoint-1" / "model.safetensors").exists()


def _nan_weights(checkpoint: Path) -> None:
    weights = checkpoint / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, weights, metadata={"format": "pt"})


def test_resume_skips_a_non_finite_checkpoint(kit: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    out = kit["root"] / "nan-resume"
    # 8 rows, batch 4: two steps per epoch, a checkpoint each epoch.
    result = _finetune(kit, out, "--epochs", "2", "--batch-size", "4", "--keep-checkpoints")
    assert result.exit_code == 0, result.output
    _nan_weights(out / "checkpoint-4")
    assert last_usable_checkpoint(out) == str(out / "checkpoint-2")
    result = _finetune(kit, out, "--epochs", "2", "--batch-size", "4", "--resume")
    assert result.exit_code == 0, result.output
    assert "checkpoint-4 holds NaN or infinite" in caplog.text
    results = json.loads((out / "results.json").read_text())
    assert results["global_steps"] == 4
    assert torch.isfinite(torch.cat([t.flatten() for t in load_file(out / "model.safetensors").values()])).all()


def test_training_that_diverges_saves_no_checkpoint(kit: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from adamoe.trainer import AdaMoETrainer

    step = AdaMoETrainer.training_step

    def poison(self: AdaMoETrainer, model: Any, inputs: Any, num_items: Any = None) -> torch.Tensor:
        loss = step(self, model, inputs, num_items)
        with torch.no_grad():
            next(self.model.parameters()).fill_(float("inf"))
        return loss

    monkeypatch.setattr(AdaMoETrainer, "training_step", poison)
    out = kit["root"] / "diverged"
    message = _message(_finetune(kit, out, "--epochs", "1"))
    assert "Training diverged" in message and "checkpoint-1 was not saved" in message and "--lr" in message
    assert not list(out.glob("checkpoint-*"))


def test_a_full_disk_reported_by_torch_is_a_user_error(kit: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: PreTrainedModel, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"[enforce fail at inline_container.cc:664] . unexpected pos: {os.strerror(errno.ENOSPC)}")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    message = _message(_finetune(kit, kit["root"] / "full", "--epochs", "1"))
    assert "No space left on device" in message and ".adamoe-partial" in message and "--resume" in message


def test_resuming_a_finished_run_trains_nothing_and_says_so(
    kit: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    out = kit["root"] / "finished"
    assert _finetune(kit, out, "--epochs", "1", "--keep-checkpoints").exit_code == 0
    first = json.loads((out / "results.json").read_text())
    result = _finetune(kit, out, "--epochs", "1", "--resume")
    assert result.exit_code == 0, result.output
    assert "Nothing to train" in caplog.text
    again = json.loads((out / "results.json").read_text())
    assert again["global_steps"] == first["global_steps"] == 1
    assert again["train_loss"] == pytest.approx(first["train_loss"], rel=1e-6)


def test_a_run_without_validation_data_says_so(kit: dict[str, Path], tmp_path: Path) -> None:
    args = [
        *("finetune", "--task", "sst2", "--model", str(kit["model"]), "--num-experts", "4"),
        *("--train-file", str(kit["train"]), "--output-dir", str(tmp_path / "run"), "--max-steps", "1"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["metrics"] == {} and results["metrics_note"] == "no validation data was given"


def test_convert_never_overwrites_its_input_or_a_run(kit: dict[str, Path], tmp_path: Path) -> None:
    model = shutil.copytree(kit["model"], tmp_path / "model")
    before = _snapshot(model)

    def run(out: Path, *flags: str) -> Any:
        return CliRunner().invoke(
            app, ["convert", "--model", str(model), "--output-dir", str(out), "--num-experts", "4", *flags]
        )

    assert "is the model being converted" in _message(run(model, "--overwrite"))
    assert _snapshot(model) == before
    trained = tmp_path / "trained"
    assert _finetune(kit, trained, "--epochs", "1").exit_code == 0
    weights = (trained / "model.safetensors").read_bytes()
    assert "already holds an adamoe run" in _message(run(trained))
    assert (trained / "model.safetensors").read_bytes() == weights
    converted = tmp_path / "converted"
    assert run(converted).exit_code == 0
    assert "already holds a model" in _message(run(converted))
    assert run(converted, "--overwrite", "--num-experts", "2").exit_code == 0
    assert json.loads((converted / "config.json").read_text())["adamoe"]["num_experts"] == 2
    mode = stat.S_IMODE((converted / "model.safetensors").stat().st_mode)
    assert mode == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_convert_of_a_python_caller_refuses_a_foreign_folder(kit: dict[str, Path], tmp_path: Path) -> None:
    home = _fake_home(tmp_path / "home")
    from adamoe.run.output_dir import OutputDirError

    with pytest.raises(OutputDirError, match="holds no adamoe run"):
        convert(str(kit["model"]), str(home), MoEConfig(num_experts=4), model_class=AutoModelForSequenceClassification)
    assert (home / ".ssh" / "id_rsa").read_text() == "secret key"


def test_a_finished_run_keeps_the_model_not_the_checkpoints(kit: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _finetune(kit, out, "--epochs", "2", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert not list(out.glob("checkpoint-*")) and (out / "model.safetensors").is_file()
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert f"Left {size / 1000:.1f} kB in {out}" in " ".join(result.output.split())
    kept = tmp_path / "kept"
    assert _finetune(kit, kept, "--epochs", "2", "--batch-size", "4", "--keep-checkpoints").exit_code == 0
    assert sorted(p.name for p in kept.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_overwrite_removes_exactly_what_the_run_wrote(smoke_kit, tmp_path):
    """A finished run records its entries (.adamoe-files.json); --overwrite removes those, and refuses a folder
    holding anything else even when it is named like a run's file; evaluate's and analyze's folders are the run's."""
    from typer.testing import CliRunner

    from adamoe.cli import app
    from adamoe.run.output_dir import MANIFEST_NAME

    runner = CliRunner()
    sst2, out = smoke_kit["sst2"], tmp_path / "run"
    args = ["finetune", "--task", "sst2", "--model", str(sst2.model_dir), "--train-file", str(sst2.train_file)]
    args += ["--validation-file", str(sst2.validation_file), "--max-steps", "2", "--num-experts", "4", "-o", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    recorded = set(json.loads((out / MANIFEST_NAME).read_text())["entries"])
    assert {"run_config.json", "results.json", "model.safetensors", "config.json"} <= recorded
    assert recorded == {p.name for p in out.iterdir()} - {MANIFEST_NAME}
    checkpoint = ["--task", "sst2", "--checkpoint", str(out)]
    assert runner.invoke(app, ["evaluate", *checkpoint, "--validation-file", str(sst2.validation_file)]).exit_code == 0
    assert runner.invoke(app, ["analyze", *checkpoint, "--validation-file", str(sst2.validation_file)]).exit_code == 0
    assert {"eval", "analysis"} <= set(json.loads((out / MANIFEST_NAME).read_text())["entries"])

    (out / "baseline_results.json").write_text("{}")  # the user's, named like a run's results
    (out / "runs").mkdir()
    (out / "runs" / "notes.txt").write_text("mine")
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 2 and "baseline_results.json" in result.output and "runs/" in result.output
    assert (out / "baseline_results.json").exists() and (out / "runs" / "notes.txt").exists()
    (out / "baseline_results.json").unlink()
    shutil.rmtree(out / "runs")
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert not (out / "eval").exists() and not (out / "analysis").exists()  # the old run's, removed with it
