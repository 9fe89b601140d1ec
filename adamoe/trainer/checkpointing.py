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

import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..modeling import CheckpointError
from ..output_dir import honour_umask

logger = logging.getLogger(__name__)

STAGING_DIR = ".adamoe-partial"


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
