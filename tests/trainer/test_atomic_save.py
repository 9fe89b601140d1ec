"""Saving is atomic: a save that dies half-way (here: a full disk) never replaces a good checkpoint or model.

The failure is simulated by a `save_pretrained` that writes the weights, truncates them to half and raises
ENOSPC, as a disk filling up mid-write would.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_toys import pad_collate, tiny_bert, toy_dataset
from transformers import PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

import adamoe
from adamoe import CheckpointError
from adamoe.trainer import CURRICULUM_STATE_NAME, TIMING_STATE_NAME, AdaMoETrainer, AdaMoETrainingArguments
from adamoe.trainer.checkpointing import STAGING_DIR

_real_save_pretrained = PreTrainedModel.save_pretrained


def _fill_disk_on_call(monkeypatch: pytest.MonkeyPatch, failing_call: int) -> None:
    calls = []

    def save_pretrained(self: PreTrainedModel, save_directory: str, *args: Any, **kwargs: Any) -> None:
        calls.append(save_directory)
        _real_save_pretrained(self, save_directory, *args, **kwargs)
        if len(calls) == failing_call:
            weights = Path(save_directory, "model.safetensors")
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_pretrained)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _args(train_kwargs: dict[str, Any], **overrides: Any) -> AdaMoETrainingArguments:
    save = {"save_strategy": "steps", "save_steps": 2, "max_steps": 4, "curriculum": True}
    return AdaMoETrainingArguments(**{**train_kwargs, **save, **overrides})


def test_stock_trainer_leaves_a_half_written_checkpoint_that_resume_would_pick(
    train_kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pinned transformers behaviour, the reason for adamoe's staging: the damaged checkpoint-4 is "the last".
    _fill_disk_on_call(monkeypatch, failing_call=2)
    args = TrainingArguments(**{**train_kwargs, "save_strategy": "steps", "save_steps": 2, "max_steps": 4})
    trainer = Trainer(model=tiny_bert(moe=False), args=args, train_dataset=toy_dataset(16), data_collator=pad_collate)
    with pytest.raises(OSError, match="No space left"):
        trainer.train()
    assert get_last_checkpoint(args.output_dir) == os.path.join(args.output_dir, "checkpoint-4")


def test_a_checkpoint_that_fails_half_way_leaves_the_previous_one_last_and_intact(
    train_kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = _args(train_kwargs)
    out = Path(args.output_dir)
    good: dict[str, str] = {}

    class Snapshot(AdaMoETrainer):
        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            super()._save_checkpoint(model, trial)
            good.update(_digests(out / "checkpoint-2"))

    _fill_disk_on_call(monkeypatch, failing_call=2)
    trainer = Snapshot(model=tiny_bert(), args=args, train_dataset=toy_dataset(16), data_collator=pad_collate)
    with pytest.raises(OSError, match="No space left"):
        trainer.train()

    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-2")
    assert _digests(out / "checkpoint-2") == good
    assert {CURRICULUM_STATE_NAME, TIMING_STATE_NAME, "model.safetensors", "optimizer.pt"} <= set(good)
    assert adamoe.is_moe_model(adamoe.from_pretrained(str(out / "checkpoint-2")))

    # The resumed run (disk freed) trains the two missing steps and publishes a complete checkpoint-4.
    monkeypatch.undo()
    resumed = AdaMoETrainer(model=tiny_bert(), args=args, train_dataset=toy_dataset(16), data_collator=pad_collate)
    assert resumed.train(resume_from_checkpoint=True).global_step == 4
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert {CURRICULUM_STATE_NAME, TIMING_STATE_NAME, "model.safetensors"} <= set(_digests(out / "checkpoint-4"))
    assert not (out / STAGING_DIR).exists()


def test_a_final_save_that_fails_half_way_keeps_the_previous_model(
    train_kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = _args(train_kwargs, save_strategy="no", max_steps=2)
    out = Path(args.output_dir)
    trainer = AdaMoETrainer(model=tiny_bert(), args=args, train_dataset=toy_dataset(8), data_collator=pad_collate)
    trainer.train()
    trainer.save_model()
    before = _digests(out)
    assert "model.safetensors" in before and not (out / STAGING_DIR).exists()

    trainer.train()  # the weights change, so a completed save would change the file
    before = {**before, "trainer_log.jsonl": _digests(out)["trainer_log.jsonl"]}  # the second train() logged
    _fill_disk_on_call(monkeypatch, failing_call=1)
    with pytest.raises(OSError, match="No space left"):
        trainer.save_model()
    assert _digests(out) == before
    adamoe.from_pretrained(str(out))  # loads: the previous weights are whole

    monkeypatch.undo()
    trainer.save_model()
    assert _digests(out)["model.safetensors"] != before["model.safetensors"]
    assert not (out / STAGING_DIR).exists()


def test_a_push_whose_save_fails_half_way_keeps_the_previous_model_and_pushes_nothing(
    train_kwargs: dict[str, Any], fake_hub: Any
) -> None:
    # `Trainer.push_to_hub` saves with `save_model(_internal_call=True)`, the call a checkpoint save makes too;
    # it writes into the output folder, so it goes through the staging folder like any other final save.
    args = _args(train_kwargs, save_strategy="no", max_steps=2, push_to_hub=True, hub_model_id="someone/full-disk")
    out = Path(args.output_dir)
    trainer = AdaMoETrainer(model=tiny_bert(), args=args, train_dataset=toy_dataset(8), data_collator=pad_collate)
    trainer.train()
    trainer.save_model()
    trainer._finish_current_push()
    before, pushed = _digests(out), fake_hub.files("someone/full-disk")

    trainer.train()
    before = {**before, "trainer_log.jsonl": _digests(out)["trainer_log.jsonl"]}
    with pytest.MonkeyPatch.context() as disk:  # its own: undoing `monkeypatch` would unplug the fake Hub
        _fill_disk_on_call(disk, failing_call=1)
        with pytest.raises(OSError, match="No space left"):
            trainer.push_to_hub(commit_message="after the second train()")
    assert _digests(out) == before
    assert fake_hub.files("someone/full-disk") == pushed

    trainer.push_to_hub(commit_message="disk freed")
    assert _digests(out)["model.safetensors"] != before["model.safetensors"]
    assert not (out / STAGING_DIR).exists()


def test_best_checkpoint_points_at_the_published_folder(train_kwargs: dict[str, Any]) -> None:
    args = _args(
        train_kwargs,
        eval_strategy="steps",
        eval_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        save_total_limit=1,
    )
    trainer = AdaMoETrainer(
        model=tiny_bert(),
        args=args,
        train_dataset=toy_dataset(16),
        eval_dataset=toy_dataset(8, seed=2),
        data_collator=pad_collate,
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best == os.path.join(args.output_dir, f"checkpoint-{trainer.state.best_global_step}")
    assert os.path.isdir(best) and STAGING_DIR not in best


def test_resume_refuses_a_truncated_checkpoint_and_says_what_to_do(train_kwargs: dict[str, Any]) -> None:
    args = _args(train_kwargs)
    trainer = AdaMoETrainer(model=tiny_bert(), args=args, train_dataset=toy_dataset(16), data_collator=pad_collate)
    trainer.train()
    weights = Path(args.output_dir, "checkpoint-4", "model.safetensors")
    weights.write_bytes(weights.read_bytes()[:1000])
    again = AdaMoETrainer(model=tiny_bert(), args=args, train_dataset=toy_dataset(16), data_collator=pad_collate)
    with pytest.raises(CheckpointError, match=r"checkpoint-4/model.safetensors is damaged.*delete .*checkpoint-4"):
        again.train(resume_from_checkpoint=True)


def test_a_hub_push_of_a_checkpoint_reads_the_published_folder(
    train_kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pushed = []
    monkeypatch.setattr(Trainer, "_push_from_checkpoint", lambda self, folder: pushed.append(folder))
    args = _args(train_kwargs)
    trainer = AdaMoETrainer(model=tiny_bert(), args=args, train_dataset=toy_dataset(16), data_collator=pad_collate)
    trainer.args.push_to_hub = True  # after __init__, which would create the Hub repository
    trainer.train()
    # The stock push uploads in the background, so it must not read the staging folder that is being renamed.
    assert pushed == [os.path.join(args.output_dir, f"checkpoint-{step}") for step in (2, 4)]
    assert all(os.path.isfile(os.path.join(folder, TIMING_STATE_NAME)) for folder in pushed)


def test_a_hub_token_stays_out_of_the_saved_training_arguments(train_kwargs: dict[str, Any]) -> None:
    token = "hf_NotARealTokenButLongEnough123"
    kwargs = {**train_kwargs, "save_strategy": "steps", "save_steps": 2, "max_steps": 2, "hub_token": token}

    def saved_args(args: TrainingArguments) -> tuple[bytes, Any]:
        trainer_class = AdaMoETrainer if isinstance(args, AdaMoETrainingArguments) else Trainer
        trainer = trainer_class(model=tiny_bert(), args=args, train_dataset=toy_dataset(8), data_collator=pad_collate)
        trainer.train()
        trainer.save_model()
        out = Path(args.output_dir)
        files = [out / "checkpoint-2" / "training_args.bin", out / "training_args.bin"]
        blobs = [path.read_bytes() for path in files]
        return b"".join(blobs), torch.load(files[0], weights_only=False)

    # Pinned transformers behaviour, the reason for the override: the stock arguments pickle the token.
    stock_bytes, _ = saved_args(TrainingArguments(**{**kwargs, "output_dir": kwargs["output_dir"] + "-stock"}))
    assert token.encode() in stock_bytes

    args = AdaMoETrainingArguments(**kwargs, curriculum=True, target_loss=0.5)
    blob, loaded = saved_args(args)
    assert token.encode() not in blob
    assert args.hub_token == token  # the live arguments can still push
    assert loaded.hub_token is None and type(loaded) is AdaMoETrainingArguments
    assert (loaded.curriculum, loaded.target_loss, loaded.save_steps) == (True, 0.5, 2)
    copied = copy.deepcopy(args)
    assert copied.hub_token == token and copied.to_dict() == args.to_dict() and copied is not args


def test_hub_pushes_leave_adamoes_bookkeeping_out(train_kwargs: dict[str, Any], fake_hub: Any) -> None:
    """Both pushes of the output folder, a checkpoint's (in the background) and `push_to_hub`'s, upload the model
    but none of adamoe's own entries: the run lock and its holder's pid, the manifest, the staging folder of a save,
    a checkpoint moved aside for replacement and an atomic write's temporary file, all planted here as a crash or a
    concurrent save leaves them."""
    args = _args(train_kwargs, max_steps=2, push_to_hub=True, hub_model_id="someone/private-files")
    trainer = AdaMoETrainer(model=tiny_bert(), args=args, train_dataset=toy_dataset(8), data_collator=pad_collate)
    trainer.train()
    trainer._finish_current_push()
    out = Path(args.output_dir)
    private = [".adamoe.lock", ".adamoe.lock.owner", ".adamoe-files.json", f"{STAGING_DIR}/model/model.safetensors"]
    private += [".checkpoint-2.old/model.safetensors", ".results.json.k2j4x9.tmp"]
    for name in private:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("adamoe's, not the model's\n")
    (out / "notes.txt").write_text("the user's\n")  # any other file in the folder is pushed as before

    for push in ("checkpoint", "final"):
        if push == "checkpoint":
            trainer._push_from_checkpoint(str(out / "checkpoint-2"))
            trainer._finish_current_push()
        else:
            trainer.push_to_hub(commit_message="final")
        hub = fake_hub.files("someone/private-files")
        assert {"model.safetensors", "config.json", "notes.txt"} <= set(hub), (push, sorted(hub))
        assert not set(private) & set(hub), (push, sorted(hub))
    assert not fake_hub.unknown, fake_hub.unknown
