"""The output folder of a run: what may be replaced, who may write it, and how its files are made.

A user's folder is never emptied by mistake. `check_output_dir` only looks (it runs before anything is written)
and refuses, with a message that says what the folder holds:

- `.`, the home folder, the filesystem root and any parent of the current folder, whatever they hold;
- a non-empty folder that is not an adamoe run (no `run_config.json`), with or without `--overwrite`;
- a run folder holding anything a run does not write (the user's notes, data), even with `--overwrite`;
- a run folder without `--overwrite` or `--resume`.

`clear_run_files` then removes only the entries the run wrote (its manifest, `MANIFEST_NAME`; a folder without
one: the entries named like a run's files, `RUN_FILE_PATTERNS`), and `RunLock` keeps a second
run out of the folder for as long as the first one holds it: an advisory `flock` (the `filelock` package),
released by the kernel when its holder dies, so the lock of a killed run is stale by construction and the next
run simply takes it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..files import LOCK_NAME, LOCK_OWNER_NAME, MANIFEST_NAME, STAGING_DIR

RUN_CONFIG_NAME = "run_config.json"
RESULTS_NAME = "results.json"
LOCK_FILES = (LOCK_NAME, LOCK_OWNER_NAME)
# The manifest (`MANIFEST_NAME`) lists what a run wrote into its folder, top-level entries, written when the run ends
# (finished or failed): what `--overwrite` removes, exactly. A folder without one (a run killed outright, or written
# before adamoe kept it) falls back to the name patterns below.

# Every top-level entry a run (or `adamoe convert`) writes: the model and tokenizer files `save_pretrained`
# writes, the Trainer's checkpoints and arguments, adamoe's own files, and the folders of reports and logs.
RUN_FILE_PATTERNS = (
    RUN_CONFIG_NAME,
    RESULTS_NAME,
    LOCK_NAME,
    LOCK_OWNER_NAME,
    STAGING_DIR,
    ".checkpoint-*.old",
    "checkpoint-*",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "training_args.bin",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.*",
    "vocab*",
    "merges.txt",
    "*.model",
    "*.spm",
    "README.md",
    "*_predictions.*",
    "*_results.json",
    "trainer_log.jsonl",
    "routing_log.jsonl",
    "analysis",
    "adapter",
    "eval",
    "runs",
)


class OutputDirError(RuntimeError):
    """The output folder may not be written or replaced as asked; the message says what it holds."""


def is_run_file(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_FILE_PATTERNS)


def read_manifest(folder: Path) -> set[str] | None:
    """The entries the run in `folder` recorded as its own, or None when it recorded none."""
    path = folder / MANIFEST_NAME
    try:
        entries = json.loads(path.read_text())["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return set(entries) if isinstance(entries, list) else None


def write_manifest(folder: str | os.PathLike, before: set[str]) -> None:
    """Record the top-level entries of `folder` now that were not there `before` the run, with what an earlier
    run of the folder recorded (a resumed run owns what it continued)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    owned = (read_manifest(folder) or set()) | {
        p.name for p in folder.iterdir() if p.name not in before and p.name not in (*LOCK_FILES, MANIFEST_NAME)
    }
    tmp = folder / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps({"entries": sorted(owned)}, indent=1) + "\n")
    os.replace(tmp, folder / MANIFEST_NAME)


def claim_in_run(folder: str | os.PathLike) -> None:
    """Record `folder` (evaluate's `eval/`, analyze's `analysis/`, a sweep) in the manifest of the run folder it
    sits in, if it sits in one, so that the run's `--overwrite` counts it as the run's own."""
    folder = Path(folder).resolve()
    manifest = read_manifest(folder.parent)
    if manifest is not None and folder.name not in manifest:
        tmp = folder.parent / f".{MANIFEST_NAME}.tmp"
        tmp.write_text(json.dumps({"entries": sorted(manifest | {folder.name})}, indent=1) + "\n")
        os.replace(tmp, folder.parent / MANIFEST_NAME)


def owned_by_run(folder: Path) -> Callable[[str], bool]:
    """Whether an entry of `folder` is the run's own: in its manifest, else by the run-file name patterns."""
    manifest = read_manifest(folder)
    if manifest is None:
        return is_run_file
    return lambda name: name in manifest or name == MANIFEST_NAME


def _describe(entries: list[str], limit: int = 8) -> str:
    shown = ", ".join(entries[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def _entries(folder: Path) -> list[str]:
    """What `folder` holds, folders marked with a slash; the lock files of a run (maybe this one's) left out."""
    return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if p.name not in LOCK_FILES)


def refuse_special_folder(folder: str | os.PathLike, flag: str = "--output-dir") -> Path:
    """`folder` resolved; `OutputDirError` for `.`, home, `/` and the parents of the current folder."""
    path = Path(folder).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if path == cwd or path in cwd.parents:
        raise OutputDirError(
            f"{flag} {folder} is the current folder or one of its parents; adamoe writes a run into a folder of its "
            f"own. Pass a new folder, e.g. {flag} runs/my-run."
        )
    if path == Path.home().resolve() or path == Path(path.anchor):
        raise OutputDirError(
            f"{flag} {folder} is the home folder or the filesystem root; adamoe writes a run into a folder of its "
            f"own. Pass a new folder, e.g. {flag} runs/my-run."
        )
    return path


def check_output_dir(folder: str | os.PathLike, *, overwrite: bool, resume: bool, what: str = "run") -> Path:
    """Refuse a folder this run may not write (see the module docstring); looks, never writes.

    `what` names the thing being written: "run"; "model" for `adamoe convert`, whose folders hold no run config
    (a converted model folder, made only of files `save_pretrained` writes, may be replaced too); "predictions"
    for `adamoe evaluate`, which writes only prediction files (and replaces them without `overwrite`).
    """
    path = refuse_special_folder(folder)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"--output-dir {folder} is a file, not a folder. Pass a folder for the {what}.")
    if not path.is_dir() or (not _entries(path) and not resume):
        return path
    if resume:  # resuming deletes nothing; the caller checks that there is a checkpoint to continue from
        return path
    entries = _entries(path)
    is_run = (path / RUN_CONFIG_NAME).is_file()
    is_model = what == "model" and (path / "config.json").is_file()
    owned = owned_by_run(path)
    if what == "predictions":
        foreign = [name for name in entries if not owned(name.rstrip("/"))]
        if foreign:
            raise OutputDirError(
                f"{folder} holds files an evaluation does not write: {_describe(foreign)}; choose another "
                "--output-dir for the predictions."
            )
        return path
    if not is_run and not is_model:
        raise OutputDirError(
            f"{folder} is not empty and holds no adamoe run (no {RUN_CONFIG_NAME}): it holds {_describe(entries)}. "
            "adamoe never writes into or empties such a folder, with or without --overwrite; choose a new or empty "
            "--output-dir."
        )
    foreign = [name for name in entries if not owned(name.rstrip("/"))]
    kind = "an adamoe run" if is_run else "a model"
    if foreign:
        raise OutputDirError(
            f"{folder} holds {kind}, but also files a run does not write: {_describe(foreign)}. adamoe replaces "
            "only folders that hold nothing else; move those files out, or choose another --output-dir."
        )
    if not overwrite:
        held = f"holds {kind} ({_describe(entries)})"
        continue_it = "Pass --resume to continue it, " if is_run else "Pass "
        raise OutputDirError(
            f"{folder} already {held}. {continue_it}--overwrite to replace it, or choose another --output-dir."
        )
    return path


def check_report_dir(
    folder: str | os.PathLike, outputs: tuple[str, ...], *, overwrite: bool, flag: str = "--output-dir"
) -> Path:
    """Refuse a folder a report command (`analyze`, `bench`) may not write; looks, never writes.

    The rules of `check_output_dir` for what a command writes into a folder of its own: never the current folder,
    its parents, home or `/`; never a folder that holds anything but the command's own `outputs` (file names or
    patterns), with or without `--overwrite`; and the outputs of an earlier report are replaced only with
    `--overwrite`.
    """
    path = refuse_special_folder(folder, flag)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{flag} {folder} is a file, not a folder. Pass a folder for the report.")
    if not path.is_dir():
        return path
    entries = _entries(path)
    foreign = [e for e in entries if not any(fnmatch.fnmatchcase(e.rstrip("/"), p) for p in outputs)]
    if foreign:
        raise OutputDirError(
            f"{flag} {folder} holds files this command does not write: {_describe(foreign)}. adamoe writes a report "
            "only into a new folder or one that holds an earlier report of the same kind; choose another folder."
        )
    if entries and not overwrite:
        raise OutputDirError(
            f"{flag} {folder} already holds a report ({_describe(entries)}). Pass --overwrite to replace it, or "
            "choose another folder."
        )
    return path


def clear_run_files(folder: str | os.PathLike) -> None:
    """Remove the entries of `folder` the run there wrote (its manifest's, else those named like a run's files),
    after `check_output_dir` said it holds nothing else; the lock files stay, since the caller holds the lock."""
    owned = owned_by_run(Path(folder))
    for entry in Path(folder).iterdir():
        if entry.name in LOCK_FILES or not owned(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


class RunLock:
    """An advisory lock on a run folder, held by the process that writes it for the whole run.

    Example:
        ```python
        >>> with RunLock("runs/sst2"):
        ...     trainer.train()
        ```
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        from filelock import FileLock  # only the commands that write a run need it

        self.folder = Path(folder)
        self._lock = FileLock(str(self.folder / LOCK_NAME), timeout=0)

    def __enter__(self) -> RunLock:
        from filelock import Timeout

        self.folder.mkdir(parents=True, exist_ok=True)
        owner = self.folder / LOCK_OWNER_NAME
        try:
            self._lock.acquire()
        except Timeout:
            holder = owner.read_text().strip() if owner.is_file() else "unknown"
            raise OutputDirError(
                f"Another adamoe process (pid {holder}) is writing {self.folder}. Wait for it to finish, or choose "
                "another --output-dir; two runs in one folder would mix their files."
            ) from None
        # A pid left by a killed run is simply replaced: its flock died with it.
        owner.write_text(f"{os.getpid()}\n")
        return self

    def __exit__(self, *exc: object) -> None:
        # The lock files go before the release, so a finished folder holds only what the run wrote (a contender
        # that opened the old file in between fails at once: it never waits).
        (self.folder / LOCK_OWNER_NAME).unlink(missing_ok=True)
        (self.folder / LOCK_NAME).unlink(missing_ok=True)
        self._lock.release()
