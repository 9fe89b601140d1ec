"""CLI parsing: flags override the run config, and reach the Python API unchanged."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

import adamoe.run.recipe as recipes
from adamoe.cli import app

runner = CliRunner()


@pytest.fixture
def captured(monkeypatch):
    """Replace the training itself: these tests check what the CLI asks the API for."""
    calls = []

    def fake_finetune(config):
        calls.append(config)
        return {"task": config.task, "gating": config.gating, "metrics": {"accuracy": 0.5}, "checkpoint": "x"}

    monkeypatch.setattr(recipes, "finetune", fake_finetune)
    return calls


def test_main_command_maps_flags_onto_the_run_config(captured, tmp_path):
    result = runner.invoke(
        app,
        [
            "finetune",
            "--task",
            "sst2",
            "--threshold",
            "0.2",
            "--num-experts",
            "8",
            "--model",
            "some/model",
            "--train-file",
            "t.tsv",
            "--validation-file",
            "v.tsv",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--lr",
            "1e-4",
            "--seed",
            "7",
            "--max-train-samples",
            "10",
            "--curriculum",
            "--target-loss",
            "0.3",
            "--output-dir",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 0, result.output
    (config,) = captured
    assert (config.task, config.model, config.moe.threshold, config.moe.num_experts) == ("sst2", "some/model", 0.2, 8)
    assert (config.data.train_file, config.data.validation_file, config.data.max_train_samples) == (
        "t.tsv",
        "v.tsv",
        10,
    )
    assert config.training == {
        "num_train_epochs": 2.0,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "learning_rate": 1e-4,
        "seed": 7,
        "curriculum": True,
        "target_loss": 0.3,
    }
    assert "accuracy" in result.output


def test_flags_override_the_config_file_and_dense_drops_the_moe(captured):
    result = runner.invoke(app, ["finetune", "--config", "sst2", "--lr", "5e-5", "--gating", "top2"])
    assert result.exit_code == 0, result.output
    config = captured[-1]
    assert config.training["learning_rate"] == 5e-5 and config.training["per_device_train_batch_size"] == 24
    assert config.moe.gating == "top2" and config.moe.expert_init == "random"
    result = runner.invoke(app, ["finetune", "--config", "sst2", "--gating", "dense"])
    assert result.exit_code == 0 and captured[-1].moe is None


def test_bad_input_gets_a_message_not_a_traceback(captured):
    result = runner.invoke(app, ["finetune", "--task", "sst2", "--threshold", "1.5"])
    assert result.exit_code == 2 and "threshold must be in [0, 1]" in result.output
    assert not captured
    result = runner.invoke(app, ["finetune", "--task", "mnli"])
    assert result.exit_code == 2 and "sst2" in result.output
    result = runner.invoke(app, ["finetune", "--threshold", "0.1"])
    assert result.exit_code == 2 and "Name a task" in result.output


def test_tasks_lists_every_task():
    result = runner.invoke(app, ["tasks"], terminal_width=200)
    assert result.exit_code == 0
    for name in ("sst2", "squad", "wmt19", "cnn_dailymail", "wikitext", "soda"):
        assert name in result.output


def test_an_adamoe_checkpoint_keeps_its_own_moe_structure_unless_flags_change_it(captured, tmp_path):
    from tiny_models import arch_by_name

    import adamoe

    model = adamoe.moeify(arch_by_name("bert").build(), adamoe.MoEConfig(num_experts=3, threshold=0.3))
    model.save_pretrained(tmp_path / "ckpt")
    result = runner.invoke(app, ["finetune", "--task", "sst2", "--model", str(tmp_path / "ckpt")])
    assert result.exit_code == 0, result.output
    assert (captured[-1].moe.num_experts, captured[-1].moe.threshold) == (3, 0.3)
    result = runner.invoke(
        app, ["finetune", "--task", "sst2", "--model", str(tmp_path / "ckpt"), "--threshold", "0.2"]
    )
    assert (captured[-1].moe.num_experts, captured[-1].moe.threshold) == (3, 0.2)


def test_convert_saves_an_upcycled_checkpoint_that_matches_the_dense_model(tmp_path):
    import torch
    from tiny_models import arch_by_name

    import adamoe

    arch = arch_by_name("gpt2")
    dense = arch.build()
    dense.save_pretrained(tmp_path / "dense")
    result = runner.invoke(
        app,
        ["convert", "--model", str(tmp_path / "dense"), "--output-dir", str(tmp_path / "moe"), "--num-experts", "4"],
    )
    assert result.exit_code == 0, result.output
    model = adamoe.from_pretrained(str(tmp_path / "moe"))
    assert adamoe.moe_config_of(model).num_experts == 4 and len(adamoe.moe_blocks(model)) == 2
    inputs = arch.inputs()
    torch.testing.assert_close(model(**inputs).logits, dense(**inputs).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "flags,max_tokens,batch_size",
    [
        ([], 4096, None),  # the paper config batches FSMT by 4096 tokens
        (["--max-tokens", "2048"], 2048, None),
        (["--batch-size", "16"], None, 16),  # an explicit batch size replaces the config's token budget
        (["--batch-size", "16", "--max-tokens", "1024"], 1024, 16),
    ],
)
def test_token_budget_flags_over_the_paper_config(captured, tmp_path, flags, max_tokens, batch_size):
    args = ["finetune", "--config", "wmt19", "--model", "m", "--output-dir", str(tmp_path / "o"), *flags]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (config,) = captured
    assert config.training.get("max_tokens") == max_tokens
    assert config.training.get("per_device_train_batch_size") == batch_size


@pytest.mark.parametrize("flags,threshold", [([], None), (["--threshold", "0.2"], 0.2)])
def test_a_dense_config_stays_dense_unless_moe_flags_ask_otherwise(captured, tmp_path, flags, threshold):
    config = tmp_path / "dense.yaml"
    config.write_text("task: sst2\nmodel: some/model\nmoe: null\n")
    result = runner.invoke(app, ["finetune", "--config", str(config), "--output-dir", str(tmp_path / "o"), *flags])
    assert result.exit_code == 0, result.output
    (run,) = captured
    assert (run.moe is None) if threshold is None else (run.moe.threshold == threshold)


@pytest.mark.parametrize(
    "args", [["--help"], ["finetune", "--help"], ["evaluate", "--help"], ["bench", "--help"], ["tasks"]]
)
def test_help_and_tasks_import_neither_torch_nor_transformers(args):
    """`adamoe --help` answers in a fraction of a second because the commands import what they use when they run
    (figures: scripts/startup_time.py)."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from adamoe.cli import app\n"
        f"result = CliRunner().invoke(app, {args!r})\n"
        "assert result.exit_code == 0, result.output\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
