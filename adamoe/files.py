"""What adamoe writes to disk, and how: files appear whole (atomic writes), with the modes the user's umask gives,
and never hold credentials; and which entries of a run folder are adamoe's bookkeeping, kept off the Hub. Standard
library only, so every layer of the package may use it.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

# adamoe's bookkeeping in a run folder, written by `run/output_dir.py` and `trainer/checkpointing.py`: the run's lock
# and its holder's pid, the manifest of the entries the run wrote, and the staging folder of a save in progress.
LOCK_NAME = ".adamoe.lock"
LOCK_OWNER_NAME = ".adamoe.lock.owner"  # the holder's pid: the lock file itself is truncated by each contender
MANIFEST_NAME = ".adamoe-files.json"
STAGING_DIR = ".adamoe-partial"

# What a push of a run folder to the Hub leaves out, as huggingface_hub `ignore_patterns` (fnmatch on the path in the
# folder; `*` matches "/" too). The bookkeeping describes this machine's run, not the model, and the lock owner holds
# a process id; the others are what an atomic write or a checkpoint replacement keeps aside for a moment
# (`.<name>.<random>.tmp`, `.checkpoint-N.old/`), which a push running in the background could list and then find
# gone.
HUB_IGNORE_PATTERNS = (
    LOCK_NAME,
    LOCK_OWNER_NAME,
    MANIFEST_NAME,
    f"{STAGING_DIR}/*",
    ".*.tmp",
    ".checkpoint-*.old/*",
)


def is_secret_key(name: str) -> bool:
    """`hub_token`, `token`, `hf_token`...: credentials, never written to a file (`max_tokens` is a count)."""
    return name.lower() == "token" or name.lower().endswith("_token")


def current_umask() -> int:
    """The process umask (read from /proc where it can be, so no other thread sees it changed)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str | os.PathLike) -> None:
    """Give `path` (a file or a whole tree) the modes a plain `open`/`mkdir` would have given it.

    Files written through `tempfile.mkstemp` or by safetensors are created 0600; once published they should be
    as readable as every other file the user creates (0644 under umask 022).
    """
    mask = current_umask()
    path = Path(path)
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        if p.is_symlink():
            continue
        mode = 0o777 if p.is_dir() else 0o666
        if not p.is_dir() and os.stat(p).st_mode & stat.S_IXUSR:
            mode = 0o777
        os.chmod(p, mode & ~mask)


def write_json_atomically(path: str | os.PathLike, payload: Any) -> None:
    """Write JSON next to `path` and move it into place, so a crash never leaves half a file there."""
    write_text_atomically(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write `text` next to `path` and move it into place, so a crash never leaves half a file there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        honour_umask(tmp)  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
