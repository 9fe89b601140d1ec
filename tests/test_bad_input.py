"""Bad input through the real `adamoe finetune` command: each case ends with exit code 2 and one "Error: ..."
paragraph that says what is wrong and what to do, never a traceback, and nothing is trained or overwritten.

The library-level checks behind these messages are tested where they live (tests/test_modeling.py,
tests/test_finetune.py, tests/tasks/); this table pins what a user sees.
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tiny_run import write_model_folder, write_sst2
from transformers import AutoModelForSequenceClassification, PreTrainedModel
from typer.testing import CliRunner

from adamoe import MoEConfig
from adamoe.cli import app
from adamoe.run.models import convert


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every input the table needs, good and bad, built once."""
    root = tmp_path_factory.mktemp("bad_input")
    dense = write_model_folder(root / "dense")
    moe = root / "moe4"  # an adamoe checkpoint with 4 experts
    convert(str(dense), str(moe), MoEConfig(num_experts=4), model_class=AutoModelForSequenceClassification)
    truncated = root / "moe4-truncated"
    shutil.copytree(moe, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (root / "empty.tsv").write_text("")
    (root / "unknown_task.yaml").write_text("task: mnli\n")
    lines = {
        "wrong_columns.tsv": "text\tlabel\na fine film\t1\n",
        "bad_labels.tsv": "sentence\tlabel\na fine film\t1\na dull film\t2\n",
        "blank.tsv": "sentence\tlabel\n \t1\n\t0\n  \t1\n \t0\n",
    }
    squad = {"title": "t", "context": "Paris is the capital of France.", "question": "What is the capital?"}
    (root / "squad_bad.jsonl").write_text(
        json.dumps({**squad, "id": "q-good", "answers": {"text": ["Paris"], "answer_start": [0]}})
        + "\n"
        + json.dumps({**squad, "id": "q-bad", "answers": {"text": ["France"], "answer_start": ["abc"]}})
        + "\n"
    )
    for name, text in lines.items():
        (root / name).write_text(text)
    yamls = {
        "empty.yaml": "",
        "malformed.yaml": "task: sst2\ntraining: {learning_rate: 3e-5\n",
        "moe_list.yaml": "task: sst2\nmoe: [1, 2]\n",
        "training_number.yaml": "task: sst2\ntraining: 5\n",
        "lr_text.yaml": "task: sst2\ntraining:\n  learning_rate: fast\n",
        "bool_text.yaml": "task: sst2\ntraining:\n  curriculum: 'false'\n",
        "moe_word.yaml": "task: sst2\nmoe: {threshold: abc}\n",
        "reentrant.yaml": "task: sst2\ntraining:\n  gradient_checkpointing: true\n"
        "  gradient_checkpointing_kwargs: {use_reentrant: true}\n",
        # Nine levels of nine aliases: 9**9 values once expanded.
        "anchors.yaml": "task: sst2\n"
        + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10)).replace(
            "l1: &l1 [*l0", "l0: &l0 x\nl1: &l1 [*l0"
        ),
    }
    for name, text in yamls.items():
        (root / name).write_text(text)
    (root / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (root / "no-config").mkdir()
    (root / "no-config" / "weights.bin").write_bytes(b"0")
    (root / "a-folder.tsv").mkdir()
    (root / "short.txt").write_text("a short line .\n")
    no_weights = root / "no-weights"
    shutil.copytree(moe, no_weights / "checkpoint-4")
    (no_weights / "checkpoint-4" / "model.safetensors").unlink()
    return {
        "root": root,
        "dense": dense,
        "moe4": moe,
        "truncated": truncated,
        "albert": write_model_folder(root / "albert", architecture="albert"),
        "train": write_sst2(root / "train.tsv", 8),
        "dev": write_sst2(root / "dev.tsv", 4, seed=1),
        "no_weights": no_weights,
        "no_config": root / "no-config",
        "a_folder": root / "a-folder.tsv",
        "short": root / "short.txt",
        "squad_bad": root / "squad_bad.jsonl",
        **{Path(name).stem: root / name for name in ("empty.tsv", "unknown_task.yaml", *lines)},
        **{name: root / name for name in (*yamls, "binary.yaml")},
    }


def _run_holding(files: dict[str, Path], name: str, *, checkpoint: Path | None = None) -> Path:
    """An output directory that already holds a run (results only, or a run config and a checkpoint)."""
    out = files["root"] / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    if checkpoint is None:
        (out / "run_config.json").write_text("{}")
        (out / "results.json").write_text("{}")
    else:
        shutil.copytree(checkpoint, out / "checkpoint-4")
    return out


def _model_as_run(files: dict[str, Path]) -> Path:
    """A dense model folder that is also an earlier run's output folder (`-m DIR -o DIR`)."""
    out = files["root"] / "model-as-run"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(files["dense"], out)
    (out / "run_config.json").write_text("{}")
    return out


@dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[dict[str, Path]], list[str]]  # flags after `finetune --task sst2`, given the files
    says: tuple[str, ...]  # what the message must contain: the problem, and what to do


def _base(files: dict[str, Path], *, model: str = "dense", train: str = "train", out: str = "out") -> list[str]:
    return [
        *("--model", str(files[model]) if model in files else model),
        *("--train-file", str(files[train]), "--validation-file", str(files["dev"])),
        *("--output-dir", str(files["root"] / out), "--num-experts", "4", "--max-steps", "1"),
    ]


CASES = [
    Case(
        "model path does not exist",
        lambda f: _base(f, model=str(f["root"] / "no-such-model")),
        ("Model folder", "no-such-model does not exist", "Pass --model with a folder"),
    ),
    Case(
        "unsupported architecture",
        lambda f: _base(f, model="albert"),
        ("cannot convert model_type 'albert'", "supported are bart, bert", "register_ffn_spec"),
    ),
    Case("empty data file", lambda f: _base(f, train="empty"), ("empty.tsv is empty",)),
    Case(
        "data file lacks the task's columns",
        lambda f: _base(f, train="wrong_columns"),
        ("missing column(s) ['sentence']", "found ['text', 'label']", "Expected columns ['sentence', 'label']"),
    ),
    Case(
        "unknown label values",
        lambda f: _base(f, train="bad_labels"),
        ("bad_labels.tsv: SST-2 labels must be 0 (negative) or 1 (positive); found [2] (rows [1]",),
    ),
    Case(
        "missing data file",
        lambda f: _base(f, train="dev") + ["--train-file", str(f["root"] / "nope.tsv")],
        ("Data file", "nope.tsv does not exist"),
    ),
    Case(
        "unknown task in a run config",
        lambda f: ["--config", str(f["unknown_task"])],
        ("unknown_task.yaml", "mnli", "sst2"),
    ),
    Case("threshold out of range", lambda f: _base(f) + ["--threshold", "-0.1"], ("threshold must be in [0, 1]",)),
    Case(
        "expert count out of range",
        lambda f: _base(f) + ["--num-experts", "0"],
        ("num_experts must be between 1 and 1024, got 0",),
    ),
    Case(
        "output directory holds another run",
        lambda f: _base(f, out=_run_holding(f, "other-run").name),
        ("already holds an adamoe run", "Pass --resume to continue it, --overwrite to replace it"),
    ),
    Case(
        "truncated checkpoint as the model",
        lambda f: _base(f, model="truncated"),
        ("moe4-truncated/model.safetensors is damaged", "incomplete metadata", "save the checkpoint again"),
    ),
    Case(
        "truncated checkpoint to resume from",
        lambda f: _base(f, out=_run_holding(f, "crashed", checkpoint=f["truncated"]).name) + ["--resume"],
        ("checkpoint-4/model.safetensors is damaged", "delete", "or start again with --overwrite"),
    ),
    Case(
        "checkpoint with another MoE structure",
        lambda f: _base(f, model="moe4") + ["--num-experts", "8"],
        ("is an adamoe checkpoint with num_experts=4, but this run asks for num_experts=8", "--num-experts"),
    ),
]


def _yaml(name: str) -> Callable[[dict[str, Path]], list[str]]:
    return lambda f: ["--config", str(f[name])]


CASES += [
    Case("negative learning rate", lambda f: _base(f) + ["--lr", "-1"], ("training.learning_rate (--lr) must be",)),
    Case("nan learning rate", lambda f: _base(f) + ["--lr", "nan"], ("--lr) must be a finite number",)),
    Case("infinite learning rate", lambda f: _base(f) + ["--lr", "inf"], ("--lr) must be a finite number",)),
    Case("batch size 0", lambda f: _base(f) + ["--batch-size", "0"], ("(--batch-size) must be at least 1, got 0",)),
    Case("nan epochs", lambda f: _base(f)[:-2] + ["--epochs", "nan"], ("(--epochs) must be a finite number",)),
    Case("zero epochs", lambda f: _base(f)[:-2] + ["--epochs", "0"], ("(--epochs) must be greater than 0",)),
    Case("zero steps", lambda f: _base(f)[:-2] + ["--max-steps", "0"], ("(--max-steps)", "would train nothing")),
    Case(
        "no training rows",
        lambda f: _base(f) + ["--max-train-samples", "0"],
        ("(--max-train-samples) must be at least 1",),
    ),
    Case("an all-blank text column", lambda f: _base(f, train="blank"), ("4 of 4 rows have a blank 'sentence'",)),
    Case(
        "SQuAD answer_start that is not a number",
        lambda f: ["--task", "squad", *_base(f, train="squad_bad"), "--validation-file", str(f["squad_bad"])],
        ("1 of 2 questions have an answer_start that does not point at the answer", "q-bad", "--skip-bad-examples"),
    ),
    Case("empty YAML", _yaml("empty.yaml"), ("empty.yaml is empty", "names at least the task")),
    Case("binary YAML", _yaml("binary.yaml"), ("binary.yaml is not a UTF-8 text file",)),
    Case("malformed YAML", _yaml("malformed.yaml"), ("malformed.yaml is not valid YAML", "line")),
    Case("moe is a list", _yaml("moe_list.yaml"), ("moe_list.yaml", "'moe' section must be a mapping")),
    Case("training is a number", _yaml("training_number.yaml"), ("'training' section must be a mapping",)),
    Case(
        "a word where a number belongs",
        _yaml("lr_text.yaml"),
        ("lr_text.yaml", "training.learning_rate (--lr) must be a number, got 'fast'"),
    ),
    Case("YAML anchors that explode", _yaml("anchors.yaml"), ("anchors.yaml", "aliases expand to more than")),
    Case(
        'the string "false" where a boolean belongs',
        _yaml("bool_text.yaml"),
        ("bool_text.yaml", "training.curriculum (--curriculum) must be true or false, got 'false'"),
    ),
    Case(
        "reentrant gradient checkpointing on an MoE model",
        lambda f: _base(f) + ["--config", str(f["reentrant.yaml"])],
        ("training settings do not fit this model", "reentrant gradient checkpointing", "use_reentrant': False"),
    ),
    Case(
        "a word where an MoE number belongs",
        _yaml("moe_word.yaml"),
        ("moe_word.yaml", "threshold must be a number, got 'abc'"),
    ),
    Case(
        "a relative model path that does not exist",
        lambda f: _base(f, model="models/missing"),
        ("Could not load model 'models/missing'", "There is no folder models/missing here either", "Hub id"),
    ),
    Case(
        "a model folder without config.json",
        lambda f: _base(f, model="no_config"),
        ("Could not load model", "no-config exists but holds no config.json"),
    ),
    Case("a folder as the training file", lambda f: _base(f, train="a_folder"), ("a-folder.tsv is a folder",)),
    Case(
        "--push-to-hub without the Hub",
        lambda f: _base(f) + ["--push-to-hub"],
        ("--push-to-hub needs the Hugging Face Hub, which cannot be reached", "Run without --push-to-hub"),
    ),
    Case(
        "--report-to a logger that does not exist",
        lambda f: _base(f) + ["--report-to", "bogus"],
        ("training settings", "bogus is not supported"),
    ),
    Case(
        "a file as the model",
        lambda f: _base(f, model=str(f["train"])),
        ("Could not load model", "train.tsv is a file, not a model folder"),
    ),
    Case(
        "--report-to a logger that is not installed",
        lambda f: _base(f) + ["--report-to", "azure_ml"],  # azureml-sdk: installed nowhere this suite runs
        ("need a package that is not installed", "azureml"),
    ),
    Case(
        "text shorter than one block",
        lambda f: ["--task", "wikitext", *_base(f, train="short"), "--validation-file", str(f["short"])],
        ("The train split has fewer than block_size=", "lower block_size"),
    ),
    Case(
        "a token budget smaller than one example",
        lambda f: _base(f) + ["--max-tokens", "2"],
        ("max_tokens (--max-tokens) is 2, but the longest training example has", "raise --max-tokens"),
    ),
    Case(
        "the model folder is the output folder",
        lambda f: _base(f, model=str(_model_as_run(f)), out="model-as-run") + ["--overwrite"],
        ("is in --output-dir", "would replace the model it starts from", "new folder"),
    ),
    Case(
        "expert-threshold routing without a target",
        lambda f: _base(f) + ["--rule", "expert_threshold"],
        ("rule='expert_threshold' needs target_experts",),
    ),
    Case(
        "a target mean outside [1, k_max]",
        lambda f: _base(f) + ["--target-experts", "3"],
        ("target_experts must be in [1, top_k] = [1, 2]", "got 3.0"),
    ),
    Case(
        "resume from a checkpoint without weights",
        lambda f: _base(f, out="no-weights") + ["--resume"],
        ("checkpoint-4 holds no model weights (model.safetensors)", "delete"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_explained_with_exit_code_2(case: Case, files: dict[str, Path]) -> None:
    args = case.args(files)
    task = [] if "--config" in args or "--task" in args else ["--task", "sst2"]
    result = CliRunner().invoke(app, ["finetune", *task, *args])
    assert result.exit_code == 2, result.output
    assert result.output.count("Error: ") == 1 and "Traceback" not in result.output
    # The paragraph after "Error: " (progress bars may come before it; rich may wrap long lines).
    message = " ".join(result.output.split("Error: ", 1)[1].split())
    for part in case.says:
        assert part in message, f"{part!r} not in {message!r}"


def test_a_refused_output_directory_is_left_untouched(files: dict[str, Path]) -> None:
    out = _run_holding(files, "kept")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = CliRunner().invoke(app, ["finetune", "--task", "sst2", *_base(files, out="kept")])
    assert result.exit_code == 2 and {p.name: p.read_bytes() for p in out.iterdir()} == before
    # A wrong --model or data file is refused before the output directory is even looked at: --overwrite cannot
    # empty it, and a fresh directory stays empty, so running again with the input fixed needs no --overwrite.
    for bad in (_base(files, model=str(files["root"] / "typo"), out="kept"), _base(files, train="empty", out="kept")):
        result = CliRunner().invoke(app, ["finetune", "--task", "sst2", *bad, "--overwrite"])
        assert result.exit_code == 2 and {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert json.loads((out / "results.json").read_text()) == {}
    result = CliRunner().invoke(app, ["finetune", "--task", "sst2", *_base(files, train="bad_labels", out="fresh")])
    assert result.exit_code == 2 and not (files["root"] / "fresh").exists()


def test_a_full_disk_mid_save_is_explained_and_the_run_resumes(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    save_pretrained, saves = PreTrainedModel.save_pretrained, []

    def fill_disk_on_second_save(self: PreTrainedModel, folder: str, *args: Any, **kwargs: Any) -> None:
        saves.append(folder)
        save_pretrained(self, folder, *args, **kwargs)
        if len(saves) == 2:  # checkpoint-2 (one step per epoch): half the weights, then ENOSPC
            weights = Path(folder, "model.safetensors")
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(weights))

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", fill_disk_on_second_save)
    # 8 rows: 1 step per epoch; the checkpoints are kept so the test can see which ones were published.
    flags = [*_base(files, out="full-disk")[:-2], "--epochs", "2", "--batch-size", "8", "--keep-checkpoints"]
    result = CliRunner().invoke(app, ["finetune", "--task", "sst2", *flags])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Error: No space left on device while writing" in message and "continue the run with --resume" in message
    out = files["root"] / "full-disk"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]

    monkeypatch.undo()
    result = CliRunner().invoke(app, ["finetune", "--task", "sst2", *flags, "--resume"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "results.json").read_text())["global_steps"] == 2
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]


def test_a_rule_whose_state_the_checkpoint_lacks_is_refused_before_anything_is_written(files: dict[str, Path]) -> None:
    out = files["root"] / "eval-expert-threshold"
    args = ["evaluate", "--task", "sst2", "--checkpoint", str(files["moe4"]), "--validation-file", str(files["dev"])]
    result = CliRunner().invoke(
        app, [*args, "--rule", "expert_threshold", "--target-experts", "1.5", "--output-dir", str(out)]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    message = " ".join(result.output.split("Error: ", 1)[1].split())
    assert "were not trained with the rule" in message and "--rule expert_threshold" in message
    assert not out.exists()


def test_a_sweep_of_a_rule_without_one_parameter_is_refused_before_anything_is_written(files: dict[str, Path]) -> None:
    out = files["root"] / "sweep-expert-threshold"
    args = ["evaluate", "--task", "sst2", "--checkpoint", str(files["moe4"]), "--validation-file", str(files["dev"])]
    result = CliRunner().invoke(app, [*args, "--sweep", "0,0.5", "--rule", "expert_threshold", "-o", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "expert_threshold has none" in " ".join(result.output.split()) and not out.exists()
