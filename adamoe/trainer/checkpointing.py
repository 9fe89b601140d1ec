"""Checkpoints that are either complete or absent: written aside, then moved into place.

transformers' Trainer writes `checkpoint-N/` file by file in its final place, and `get_last_checkpoint` (what
`resume_from_checkpoint=True` and `adamoe finetune --resume` use) picks the highest N whatever its state. A
crash or a full disk in the middle of a save therefore leaves a half-written folder that the next resume trusts.
The adamoe trainer instead writes every checkpoint into `<output_dir>/.adamoe-partial/checkpoint-N/` and, once
all ranks have finished writing, renames the folder to `<output_dir>/checkpoint-N` (one `rename` on the same
filesystem, so it is atomic). The final `save_model(output_dir)` cannot rename a folder over `output_dir` (it
holds the checkpoints), so it stages the same way and then replaces the files one by one with `os.replace`:
each file is then either the old complete one or the new complete one, never a truncated one.

`check_checkpoint_files` is the cheap integrity check run before resuming, for folders damaged some other way
(copied partially, edited by hand, written by a version that saved in place).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers.trainer
from accelerate.utils.constants import FSDP_MODEL_NAME
from safetensors import safe_open
from torch import nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..files import HUB_IGNORE_PATTERNS, STAGING_DIR, honour_umask
from ..patching.loading import CheckpointError
from .state import RunState

logger = logging.getLogger(__name__)


def move_into_place(staged: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename the folder `staged` to `final`; an existing `final` (the same step saved again) is replaced."""
    staged, final = Path(staged), Path(final)
    honour_umask(staged)  # safetensors writes its files 0600
    _fsync_tree(staged)
    if final.exists():
        # A folder cannot be renamed over a non-empty one: move the old one aside first, delete it after.
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, final)
    _fsync_dir(final.parent)


def replace_files(staged: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move every entry of the folder `staged` into `target`, each with one atomic `os.replace`."""
    staged, target = Path(staged), Path(target)
    honour_umask(staged)
    _fsync_tree(staged)
    target.mkdir(parents=True, exist_ok=True)
    # The weights last: until they land, a reader of `target` still finds the previous complete weights file.
    entries = sorted(staged.iterdir(), key=lambda p: (p.name.endswith((".safetensors", ".bin")), p.name))
    for entry in entries:
        destination = target / entry.name
        if entry.is_dir():
            move_into_place(entry, destination)
        else:
            os.replace(entry, destination)
    _fsync_dir(target)
    staged.rmdir()


WEIGHTS_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def check_checkpoint_files(folder: str | os.PathLike) -> None:
    """Raise `CheckpointError` if the checkpoint `folder` has no weights or a file of it is truncated or unreadable.

    Reads only headers: each safetensors header must cover its file exactly, each torch file (`*.pt`, `*.pth`,
    `*.bin`) must be a complete zip archive, each JSON file must parse.
    """
    folder = Path(folder)
    if not any((folder / name).is_file() for name in WEIGHTS_NAMES):
        raise CheckpointError(
            f"{folder} holds no model weights (model.safetensors). To resume, delete {folder} so that the previous "
            "checkpoint is used, or start again with --overwrite."
        )
    for path in sorted(folder.iterdir()):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt"):
                    pass
            elif path.suffix in (".pt", ".pth", ".bin"):
                if not zipfile.is_zipfile(path):
                    raise ValueError("not a complete torch archive")
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
        except Exception as err:  # safetensors, zipfile and json each raise their own types
            raise CheckpointError(damaged_message(path, err)) from err


def check_resumable_without_fsdp(folder: str | os.PathLike) -> None:
    """Raise `CheckpointError` if `folder` was written by an FSDP run, whose optimizer state only FSDP can load.

    Its `model.safetensors` is a full state dict like any other, so the weights are not lost: the message says
    how to start from them.
    """
    folder = Path(folder)
    if any(entry.name.startswith(FSDP_MODEL_NAME) for entry in folder.iterdir()):
        raise CheckpointError(
            f"{folder} was written by an FSDP run: its optimizer state is sharded or keyed the FSDP way, and "
            "transformers resumes it only with FSDP on. Resume with the same `fsdp` and `fsdp_config` in the "
            "run config's training section, launched as before (torchrun or accelerate launch, on GPUs); or "
            f"start a new run from its weights with --model {folder} in a new --output-dir."
        )


def is_finite_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether every floating-point tensor of the checkpoint's weights and optimizer state is finite."""
    folder = Path(folder)
    for weights in sorted(folder.glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensor = f.get_tensor(key)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    return False
    # optimizer.pt from the stock save; optimizer.bin from FSDP's full (FULL_STATE_DICT) optimizer state dict,
    # keyed by parameter name instead of index but shaped the same.
    for optimizer in (folder / "optimizer.pt", folder / "optimizer.bin"):
        if not optimizer.is_file():
            continue
        state = torch.load(optimizer, map_location="cpu", weights_only=True)
        for per_param in state.get("state", {}).values():
            for value in per_param.values():
                if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
                    return False
    return True


def last_usable_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` of `run_dir` whose numbers are finite (older ones are tried with a warning);
    a damaged one raises `CheckpointError` (see `check_checkpoint_files`)."""
    folders = [p for p in Path(run_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.name.split("-")[-1].isdigit()]
    checkpoints = sorted((p for p in folders if p.is_dir()), key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for checkpoint in checkpoints:
        check_checkpoint_files(checkpoint)
        if is_finite_checkpoint(checkpoint):
            return str(checkpoint)
        logger.warning(f"{checkpoint} holds NaN or infinite weights or optimizer state; skipping it for --resume.")
    return None


def damaged_message(path: str | os.PathLike, err: BaseException) -> str:
    """What to say about a damaged checkpoint file, and what to do about it."""
    folder = Path(path).parent
    return (
        f"{path} is damaged (truncated or corrupt: {err}). To resume, delete {folder} so that the previous "
        f"checkpoint is used, or start again with --overwrite."
    )


def _fsync_tree(folder: Path) -> None:
    """Flush the files of `folder` to disk before the rename publishes them (else a power cut could publish a
    folder whose files are still empty)."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def uploads_leaving_out(patterns: Sequence[str]) -> Iterator[None]:
    """While the block runs, every `upload_folder` call of the stock Trainer also leaves out `patterns`.

    The Trainer's pushes (`push_to_hub`, `_push_from_checkpoint`) upload the output folder with hard-coded
    `ignore_patterns=["_*", "checkpoint-*"]` through `hf_api().upload_folder(...)`, `hf_api` being a name of the
    `transformers.trainer` module (transformers 5.17 to 5.25; tests/trainer/test_private_hooks.py pins it). That one
    name, in that one module, is pointed at an `HfApi` view whose `upload_folder` adds `patterns`, and put back when
    the block ends; nothing else of transformers or huggingface_hub changes. A background push (`run_as_future`)
    takes its patterns when it is queued, inside the block.
    """
    shared = transformers.trainer.hf_api
    transformers.trainer.hf_api = lambda: _IgnoringUploads(shared(), patterns)
    try:
        yield
    finally:
        transformers.trainer.hf_api = shared


class _IgnoringUploads:
    """An `HfApi` whose `upload_folder` leaves out `patterns` as well as what the caller asks to leave out."""

    def __init__(self, api: Any, patterns: Sequence[str]) -> None:
        self._api, self._patterns = api, list(patterns)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def upload_folder(self, *args: Any, ignore_patterns: str | list[str] | None = None, **kwargs: Any) -> Any:
        given = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
        return self._api.upload_folder(*args, ignore_patterns=given + self._patterns, **kwargs)


class NonFiniteWeightsError(RuntimeError):
    """The weights or optimizer state became NaN or infinite: training diverged, and no checkpoint is saved."""


class AtomicCheckpointMixin:
    """Checkpoints and the final model written aside and moved into place (see the module docstring), each with
    adamoe's state (curriculum, timing, the loss so far), and never with NaN or infinite numbers.

    Overrides the private `_save_checkpoint`, `_get_output_dir` and `_push_from_checkpoint` (the stock code writes
    `<_get_output_dir()>/checkpoint-N` file by file and pushes from there; adamoe points it at the staging folder
    and pushes once the folder is published: tests/trainer/test_private_hooks.py pins that behaviour), and the
    public `save_model`, `create_model_card` and `push_to_hub`; both pushes leave adamoe's bookkeeping out of the
    upload (`uploads_leaving_out`). Reads `self.training_order`, `self.timing` and
    `self._loss_sum_so_far()` from the other adamoe mixins.
    """

    _staging_run_dir: str | None = None  # set while `_save_checkpoint` writes aside
    _push_deferred = False  # a Hub push of the checkpoint being staged, made once it is published

    def _get_output_dir(self, trial: Any) -> str:
        # While `_save_checkpoint` runs, the stock code writes `<this>/checkpoint-N`: the staging folder.
        return self._staging_run_dir or super()._get_output_dir(trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self._staging_run_dir is not None:
            # The stock push uploads from the folder in the background; the staging folder is about to be renamed.
            self._push_deferred = True
            return
        with uploads_leaving_out(HUB_IGNORE_PATTERNS):
            super()._push_from_checkpoint(checkpoint_folder)

    def push_to_hub(self, *args: Any, **kwargs: Any) -> Any:
        """The stock `push_to_hub`, leaving adamoe's bookkeeping in the output folder (`files.HUB_IGNORE_PATTERNS`:
        the run lock, its holder's pid, the manifest, a save's staging folder) out of the upload."""
        with uploads_leaving_out(HUB_IGNORE_PATTERNS):
            return super().push_to_hub(*args, **kwargs)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """The stock checkpoint plus adamoe's state, written aside and renamed into place (see checkpointing.py)."""
        self._check_finite()
        self._staging_run_dir = None
        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, STAGING_DIR)
        staged, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)  # what a crashed save left
        self.accelerator.wait_for_everyone()
        self._staging_run_dir = staging_root
        try:
            super()._save_checkpoint(model, trial)  # its rotation finds only this checkpoint there: a no-op
        finally:
            self._staging_run_dir = None
        self._save_adamoe_state(staged)
        if self.state.best_global_step:
            # The stock code looked for the best checkpoint under the staging folder; point at the real one.
            best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
            if best == final or os.path.isdir(best):
                self.state.best_model_checkpoint = best
                if self.args.should_save:
                    self.state.save_to_json(os.path.join(staged, "trainer_state.json"))
        # Every rank has written its files (RNG state is per rank) before the saving process publishes them. On
        # machines without a shared filesystem, `save_on_each_node=True` makes each node's first process do it.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            move_into_place(staged, final)
            os.rmdir(staging_root)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,  # the step numbers order them; mtime may not (transformers warns about it)
            )
        self.accelerator.wait_for_everyone()  # nobody reads or rotates checkpoints before the rename
        if self._push_deferred:
            self._push_deferred = False
            self._push_from_checkpoint(final)

    def _check_finite(self) -> None:
        """Raise `NonFiniteWeightsError` before saving weights or optimizer state that hold NaN or inf: such a
        checkpoint would become the latest one, and `--resume` would pick it up and fail again."""
        tensors = [p.detach() for p in self.model.parameters()]
        if self.optimizer is not None:
            for state in self.optimizer.state.values():
                tensors += [v for v in state.values() if torch.is_tensor(v) and v.is_floating_point()]
        bad = torch.zeros((), device=self.args.device)
        for tensor in tensors:
            # Under FSDP parameters and their optimizer state are DTensors: each rank checks the shard it holds
            # (a DTensor's own `isfinite(...).all()` would be a collective per tensor); the sum below covers all.
            if not torch.isfinite(_local_shard(tensor)).all():
                bad += 1
                break
        if self.accelerator.num_processes > 1:
            bad = self._reduce_sum(bad)  # every rank raises, or none: the others would wait in a barrier
        if float(bad) > 0:
            step = self.state.global_step
            raise NonFiniteWeightsError(
                f"Training diverged: after optimizer step {step} the weights or optimizer state hold NaN or inf "
                f"values, so checkpoint-{step} was not saved (the last finite checkpoint stays the latest one). "
                "Lower the learning rate (--lr) or raise warm-up, then start again with --overwrite or continue "
                "from the last good checkpoint with --resume."
            )

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """The stock card, unless the output folder already has adamoe's (`adamoe.run.model_card`), which says how
        to load the experts and which the stock one, written on every push, would replace."""
        card = os.path.join(self.args.output_dir, "README.md")
        if os.path.isfile(card):
            with open(card, encoding="utf-8") as f:
                if "library_name: adamoe" in f.read(4096):
                    return
        super().create_model_card(*args, **kwargs)

    def _save_adamoe_state(self, folder: str) -> None:
        """Write adamoe's run state (`state.RunState`) into a checkpoint folder (collectives: call on every rank)."""
        sampler = self.training_order
        if sampler is not None:
            sampler.sync()
        state = RunState(
            global_step=self.state.global_step,
            loss_sum=self._loss_sum_so_far(),
            timing=self.timing.state_dict(reduce_sum=self.timing.reduce_sum),
            curriculum=None if sampler is None else sampler.state_dict(),
        )
        if self.args.should_save:
            state.save(folder)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The stock `save_model`, written into a staging folder and then moved file by file into `output_dir`,
        so a crash or a full disk leaves the previous files there, not truncated ones."""
        if self._staging_run_dir is not None:  # from `_save_checkpoint`, which is already writing aside
            return super().save_model(output_dir, _internal_call=True)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        staged = os.path.join(output_dir, STAGING_DIR, "model")
        if self.args.should_save:
            shutil.rmtree(os.path.join(output_dir, STAGING_DIR), ignore_errors=True)
        self.accelerator.wait_for_everyone()
        super().save_model(staged, _internal_call=True)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            replace_files(staged, output_dir)
            os.rmdir(os.path.join(output_dir, STAGING_DIR))
        self.accelerator.wait_for_everyone()
        # What the stock `save_model` does when the user calls it; `push_to_hub`'s own save (`_internal_call`)
        # is followed by that push.
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)


def _local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """The part of `tensor` this rank holds: a DTensor's local shard (FSDP2), any other tensor itself."""
    if torch.distributed.is_available():  # torch built without distributed support has no DTensor
        from torch.distributed.tensor import DTensor

        if isinstance(tensor, DTensor):
            return tensor.to_local()
    return tensor
