"""The transformers behaviour behind each private Trainer method adamoe overrides, pinned on the *stock* Trainer:
if transformers changes it, these fail here (in both CI environments, the newest transformers and the oldest
claimed) rather than on a user's GPU. And `model_normalises_by_num_items` against what each supported head's loss
actually does with `num_items_in_batch`."""

from __future__ import annotations

import inspect
import os
from concurrent.futures import Future
from typing import Any

import datasets
import pytest
import torch
from tiny_models import ARCHITECTURES, Arch
from trainer_toys import pad_collate, tiny_bert, toy_dataset
from transformers import Trainer, TrainingArguments

from adamoe.trainer.accumulation import model_normalises_by_num_items
from adamoe.trainer.indexing import SAMPLE_INDEX_KEY


def _stock(train_kwargs: dict[str, Any], cls: type = Trainer, **overrides: Any) -> Trainer:
    args = TrainingArguments(**{**train_kwargs, "max_steps": 2, **overrides})
    return cls(model=tiny_bert(moe=False), args=args, train_dataset=toy_dataset(8), data_collator=pad_collate)


def test_save_checkpoint_writes_under_get_output_dir(train_kwargs: dict[str, Any], tmp_path) -> None:
    """adamoe's atomic save points `_get_output_dir` at a staging folder and relies on `_save_checkpoint`
    writing `<_get_output_dir(trial)>/checkpoint-<step>` there, nowhere else."""
    staging = tmp_path / "staging"

    class Redirected(Trainer):
        def _get_output_dir(self, trial: Any) -> str:
            return str(staging)

    trainer = _stock(train_kwargs, Redirected)
    trainer.train()
    trainer._save_checkpoint(trainer.model, trial=None)
    assert (staging / f"checkpoint-{trainer.state.global_step}" / "model.safetensors").is_file()
    assert not any(p.name.startswith("checkpoint-") for p in (tmp_path / "out").glob("*"))


def test_save_checkpoint_pushes_through_push_from_checkpoint(train_kwargs: dict[str, Any]) -> None:
    """adamoe defers the push of a staged checkpoint by overriding `_push_from_checkpoint`, which the stock
    `_save_checkpoint` calls with the folder it has just written when `push_to_hub` is set."""
    pushed = []

    class Recording(Trainer):
        def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
            pushed.append(checkpoint_folder)

    trainer = _stock(train_kwargs, Recording)
    trainer.train()
    trainer.args.push_to_hub = True  # after __init__, which would create the Hub repository
    trainer._save_checkpoint(trainer.model, trial=None)
    assert pushed == [os.path.join(trainer.args.output_dir, f"checkpoint-{trainer.state.global_step}")]


def test_pushes_upload_the_output_folder_through_the_trainer_modules_hf_api(
    train_kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """adamoe leaves its bookkeeping out of pushes by pointing the name `hf_api` of `transformers.trainer` at an API
    whose `upload_folder` adds ignore patterns (`checkpointing.uploads_leaving_out`); that works only while both
    stock pushes upload the output folder through that name, each with its ignore patterns as a keyword."""
    import transformers.trainer

    uploads = []

    class Recorder:
        def create_repo(self, repo_id: str, **kwargs: Any) -> Any:
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, **kwargs: Any) -> Future:
            uploads.append(kwargs)
            done = Future()  # the stock code keeps background pushes' futures and asks whether they are done
            done.set_result(None)
            return done

    monkeypatch.setattr(transformers.trainer, "hf_api", Recorder)
    trainer = _stock(train_kwargs, push_to_hub=True, hub_model_id="someone/model", save_strategy="steps", save_steps=2)
    trainer.train()  # saves checkpoint-2, whose push is the stock `_push_from_checkpoint`
    trainer.push_to_hub()
    output_dir = trainer.args.output_dir
    assert [(u["folder_path"], u["ignore_patterns"]) for u in uploads] == [(output_dir, ["_*", "checkpoint-*"])] * 2
    assert uploads[0]["run_as_future"] is True and uploads[1]["run_as_future"] is False  # checkpoint push, then final


def test_signature_columns_decide_which_dataset_columns_survive(train_kwargs: dict[str, Any]) -> None:
    """adamoe appends "sample_index" in `_set_signature_columns_if_needed`; the stock `_remove_unused_columns`
    keeps exactly `_signature_columns`."""

    class KeepsIndex(Trainer):
        def _set_signature_columns_if_needed(self) -> None:
            super()._set_signature_columns_if_needed()
            self._signature_columns.append(SAMPLE_INDEX_KEY)

    trainer = _stock(train_kwargs, KeepsIndex, remove_unused_columns=True)
    rows = datasets.Dataset.from_list(
        [{**row, SAMPLE_INDEX_KEY: i, "junk": 1} for i, row in enumerate(toy_dataset(4))]
    )
    kept = trainer._remove_unused_columns(rows, description="test")
    assert SAMPLE_INDEX_KEY in kept.column_names and "junk" not in kept.column_names
    assert "input_ids" in kept.column_names


def _labels(arch: Arch, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if arch.causal or arch.seq2seq:
        labels = inputs.get("decoder_input_ids", inputs["input_ids"]).clone()
        return {"labels": labels}
    forward = inspect.signature(type(model).forward).parameters
    if "start_positions" in forward:
        return {"start_positions": torch.tensor([1, 2, 0]), "end_positions": torch.tensor([2, 3, 1])}
    return {"labels": torch.tensor([0, 1, 1])}


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=[a.name for a in ARCHITECTURES])
def test_normalises_by_num_items_says_what_the_head_does(arch: Arch) -> None:
    """The trainer trusts a head with `num_items_in_batch` only if its loss really is divided by it: checked by
    giving the head a count 1000 times the real one and seeing whether the loss changes."""
    model = arch.build().train()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(model.forward).parameters.values()):
        pytest.skip(f"{type(model).__name__}.forward takes no **kwargs: the Trainer never passes the count")
    inputs = arch.inputs()
    inputs |= _labels(arch, model, inputs)
    torch.manual_seed(0)
    plain = model(**inputs).loss
    torch.manual_seed(0)
    counted = model(**inputs, num_items_in_batch=torch.tensor(1000 * inputs["input_ids"].numel())).loss
    uses_the_count = not torch.allclose(plain, counted)
    assert model_normalises_by_num_items(model) == uses_the_count, type(model).__name__
