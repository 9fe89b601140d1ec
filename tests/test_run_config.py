"""Run configs: the paper's hyper-parameters, strict keys, and output-directory safety."""

import json

import pytest
import torch

from adamoe.run.config import FinetuneConfig, RunConfigError
from adamoe.run.recipe import OutputDirError, _prepare_output_dir

# The paper's Table 2 hyper-parameters, as the issue lists them.
PAPER = {
    "sst2": ("bert-base-uncased", 24, 3e-5),
    "squad": ("bert-base-uncased", 24, 3e-5),
    "wmt19": ("facebook/wmt19-de-en", None, 5e-4),
    "cnn_dailymail": ("facebook/bart-large", None, 1e-5),
    "wikitext": ("gpt2-medium", 8, 1.5e-4),
    "soda": ("microsoft/DialoGPT-medium", 64, 1e-4),
}


@pytest.mark.parametrize("task", sorted(PAPER))
def test_packaged_configs_carry_the_papers_settings(task):
    config = FinetuneConfig.from_yaml(task)
    model, batch, lr = PAPER[task]
    assert (config.task, config.model, config.training["learning_rate"]) == (task, model, lr)
    if batch is not None:
        assert config.training["per_device_train_batch_size"] == batch
    moe = config.moe
    assert (moe.num_experts, moe.gating, moe.threshold, moe.aux_loss_coef) == (16, "adaptive", 0.1, 0.01)
    assert (moe.expert_init, moe.combine) == ("random", "gate")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"task": "sst2", "epochs": 3}, "Unknown run-config key"),
        ({"task": "sst2", "moe": {"experts": 4}}, "Unknown MoEConfig field"),
        ({"task": "sst2", "data": {"train": "x.tsv"}}, "Unknown data field"),
        ({"task": "sst2", "training": {"epochs": 3}}, "Unknown training field"),
        ({"task": "sst2", "training": {"output_dir": "x"}}, "top level"),
        ({"task": "sst2", "moe": {"threshold": 2.0}}, "threshold must be in"),
    ],
)
def test_unknown_or_bad_keys_are_errors(values, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig.from_dict(values)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(KeyError, match="sst2"):
        FinetuneConfig(task="mnli")


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: sst2\ntraining:\n  lr: 0.1\n")
    with pytest.raises(RunConfigError, match="run.yaml.*Unknown training field"):
        FinetuneConfig.from_yaml(path)


def test_defaults_fill_model_and_output_dir_and_round_trip():
    config = FinetuneConfig.from_dict({"task": "wikitext", "moe": None})
    assert config.model == "gpt2-medium" and config.gating == "dense" and config.output_dir == "outputs/wikitext-dense"
    again = FinetuneConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again.to_dict() == config.to_dict()


def test_an_output_dir_holding_another_run_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("{}")
    (out / "run_config.json").write_text("{}")
    config = FinetuneConfig(task="sst2", output_dir=str(out))
    with pytest.raises(OutputDirError, match="--overwrite"):
        _prepare_output_dir(config)
    assert (out / "results.json").exists()  # nothing lost
    _prepare_output_dir(FinetuneConfig(task="sst2", output_dir=str(out), overwrite=True))
    assert not (out / "results.json").exists() and not (out / "run_config.json").exists()


def test_resume_needs_a_checkpoint_and_the_same_settings(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(OutputDirError, match="no checkpoint"):
        _prepare_output_dir(FinetuneConfig(task="sst2", output_dir=str(out), resume=True))
    (out / "checkpoint-5").mkdir(parents=True)
    (out / "run_config.json").write_text(json.dumps(FinetuneConfig(task="sst2", output_dir=str(out)).to_dict()))
    assert _prepare_output_dir(FinetuneConfig(task="sst2", output_dir=str(out), resume=True)) == out
    other = FinetuneConfig.from_dict({"task": "sst2", "output_dir": str(out), "moe": {"num_experts": 4}}, resume=True)
    with pytest.raises(OutputDirError, match="moe"):
        _prepare_output_dir(other)
    with pytest.raises(RunConfigError, match="--overwrite"):
        FinetuneConfig(task="sst2", resume=True, overwrite=True)


def test_an_unreachable_hub_model_points_at_the_offline_form(monkeypatch):
    import adamoe.patching.loading as modeling
    from adamoe.tasks import get_task

    def offline(name, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(modeling.AutoConfig, "from_pretrained", offline)
    with pytest.raises(FileNotFoundError) as err:
        modeling.load_model(get_task("squad"), "bert-base-uncased", None)
    suggestion = "adamoe finetune --task squad --model PATH --train-file TRAIN --validation-file VALIDATION"
    assert suggestion in str(err.value)


def test_load_model_reads_the_config_once_and_loads_dense_and_patched_folders(tmp_path, monkeypatch):
    from tiny_run import write_model_folder
    from transformers import AutoConfig, AutoModelForSequenceClassification

    import adamoe
    import adamoe.patching.loading as modeling
    from adamoe.tasks import get_task

    dense = write_model_folder(tmp_path / "dense")
    reference = AutoModelForSequenceClassification.from_pretrained(dense).eval()
    patched = adamoe.moeify(
        AutoModelForSequenceClassification.from_pretrained(dense), adamoe.MoEConfig(num_experts=2)
    ).eval()
    patched.save_pretrained(tmp_path / "patched")
    reads = []
    real = AutoConfig.from_pretrained

    def counted(*args, **kwargs):
        reads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(modeling.AutoConfig, "from_pretrained", counted)
    batch = {"input_ids": torch.tensor([[2, 5, 9, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    for folder, moe, expected in (
        (dense, None, reference),  # dense stays dense
        (tmp_path / "patched", None, patched),  # an adamoe checkpoint keeps its experts
    ):
        reads.clear()
        model = modeling.load_model(get_task("sst2"), str(folder), moe).eval()
        assert reads == [str(folder)]
        with torch.no_grad():
            torch.testing.assert_close(model(**batch).logits, expected(**batch).logits)


def test_from_sources_lays_the_given_flags_over_the_file_once(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: sst2\nmoe: {num_experts: 4, gating: adaptive}\ntraining: {max_tokens: 4096}\n")
    config = FinetuneConfig.from_sources(
        path, {"moe": {"gating": "top2"}, "training": {"per_device_train_batch_size": 8}}
    )
    # Defaults follow the final settings: no curriculum for a fixed-k baseline, and its own output folder.
    assert (config.moe.gating, config.moe.num_experts) == ("top2", 4)
    assert config.training["curriculum"] is False and config.output_dir == "outputs/sst2-top2"
    assert "max_tokens" not in config.training  # an explicit batch size replaces the token budget
    assert FinetuneConfig.from_sources(path, {"moe": None}).moe is None  # --gating dense

    dense = tmp_path / "dense.yaml"
    dense.write_text("task: sst2\nmoe: null\n")
    assert FinetuneConfig.from_sources(dense, {"moe": {}}).moe is None
    assert FinetuneConfig.from_sources(dense, {"moe": {"num_experts": 2}}).moe.num_experts == 2


def test_from_sources_keeps_an_adamoe_checkpoints_structure(tmp_path):
    from tiny_run import write_model_folder
    from transformers import AutoModelForSequenceClassification

    from adamoe import MoEConfig
    from adamoe.run.models import convert

    dense = write_model_folder(tmp_path / "dense")
    convert(str(dense), str(tmp_path / "moe"), MoEConfig(num_experts=3, gating="top2"),
            model_class=AutoModelForSequenceClassification)  # fmt: skip
    config = FinetuneConfig.from_sources(None, {"task": "sst2", "model": str(tmp_path / "moe"), "moe": {}})
    assert (config.moe.num_experts, config.moe.gating) == (3, "top2")
    assert FinetuneConfig.from_sources(None, {"task": "sst2", "model": str(dense), "moe": {}}).moe == MoEConfig()


def test_the_flag_table_names_real_keys_and_every_finetune_flag():
    """One table maps `adamoe finetune`'s flags to run-config keys: each key exists in its section, and each flag
    of the command (the MoE ones aside, which build `moe` through MoEConfig) is in the table."""
    import dataclasses

    import typer

    from adamoe.cli import app
    from adamoe.run.config import FLAG_KEYS, LORA_FIELDS, FinetuneConfig, flag_overrides
    from adamoe.tasks import DataArgs
    from adamoe.trainer import AdaMoESeq2SeqTrainingArguments

    sections = {
        None: {f.name for f in dataclasses.fields(FinetuneConfig)},
        "data": {f.name for f in dataclasses.fields(DataArgs)},
        "training": {f.name for f in dataclasses.fields(AdaMoESeq2SeqTrainingArguments)},
        "lora": set(LORA_FIELDS),
    }
    for flag, keys in FLAG_KEYS.items():
        for section, key in keys:
            assert key in sections[section], (flag, section, key)
    command = typer.main.get_command(app).commands["finetune"]
    given = {opt for param in command.params for opt in param.opts if opt.startswith("--")}
    moe_flags = {
        "--gating", "--threshold", "--num-experts", "--top-k", "--threshold-on", "--combine", "--expert-init",
        "--aux-loss-coef", "--every-n-layers", "--rule", "--target-experts", "--entropy-loss-coef",
        "--num-null-experts",
    }  # fmt: skip
    assert given - moe_flags - {"--config", "--analyze", "--help"} == set(FLAG_KEYS)
    assert flag_overrides({"--batch-size": 8, "--resume": True, "--seed": None}) == {
        "resume": True,
        "training": {"per_device_train_batch_size": 8, "per_device_eval_batch_size": 8},
    }


def test_save_steps_alone_saves_on_those_steps_and_booleans_are_booleans():
    """A run given save_steps saves on those steps (adamoe's default strategy is once an epoch, which would
    ignore them); a boolean setting takes only true or false, never a string that reads as true."""
    config = FinetuneConfig.from_dict({"task": "sst2", "training": {"save_steps": 5}})
    assert config.training["save_strategy"] == "steps"
    chosen = FinetuneConfig.from_dict({"task": "sst2", "training": {"save_steps": 5, "save_strategy": "epoch"}})
    assert chosen.training["save_strategy"] == "epoch"  # an explicit strategy stands
    for values, field in [
        ({"training": {"curriculum": "false"}}, "training.curriculum"),
        ({"data": {"skip_bad_examples": "no"}}, "data.skip_bad_examples"),
        ({"overwrite": "yes"}, "overwrite"),
    ]:
        with pytest.raises(RunConfigError, match=f"{field}.* must be true or false"):
            FinetuneConfig.from_dict({"task": "sst2", **values})
    assert (
        FinetuneConfig.from_dict({"task": "sst2", "training": {"curriculum": False}}).training["curriculum"] is False
    )


def test_a_run_folder_written_before_a_field_existed_still_resumes(tmp_path):
    """run_config.json from an older adamoe lacks fields added since (here the MoE `rule`); they had their
    defaults then, so --resume accepts it, and still refuses a real difference."""
    from adamoe.run.output_dir import OutputDirError
    from adamoe.run.recipe import check_run_dir

    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    config = FinetuneConfig.from_dict({"task": "sst2", "model": "m", "output_dir": str(out), "resume": True})
    saved = config.to_dict()
    del saved["moe"]["rule"]
    (out / "run_config.json").write_text(json.dumps(saved))
    assert check_run_dir(config) == out.resolve()
    saved["moe"]["threshold"] = 0.3
    (out / "run_config.json").write_text(json.dumps(saved))
    with pytest.raises(OutputDirError, match=r"differs in \['moe'\]"):
        check_run_dir(config)


def test_a_bad_flag_is_not_blamed_on_the_config_file(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("task: sst2\ntraining: {learning_rate: 1.0e-4}\n")
    with pytest.raises(RunConfigError) as flag_error:
        FinetuneConfig.from_sources(path, {"training": {"learning_rate": -1}})
    assert str(flag_error.value).startswith("training.learning_rate (--lr) must be greater than 0")
    path.write_text("task: sst2\ntraining: {learning_rate: -1}\n")
    with pytest.raises(RunConfigError, match=r"ok\.yaml: training\.learning_rate"):  # the file's own value
        FinetuneConfig.from_sources(path, {"training": {"seed": 3}})
