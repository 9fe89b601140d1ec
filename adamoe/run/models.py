"""Model folders written without training: `convert` (patch a dense checkpoint and save it) and `export` (a
patched checkpoint in its family's native MoE format). Both share the output folder's rules with a run
(`output_dir.py`): never their own input, a model or run folder replaced (its own files only) only with
`overwrite`, everything checked before anything is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from ..files import honour_umask
from ..moe.config import MoEConfig
from ..patching.loading import from_pretrained, hub_commit, load_tokenizer
from .output_dir import OutputDirError, RunLock, check_output_dir, clear_run_files

logger = logging.getLogger(__name__)


def convert(
    name_or_path: str,
    output_dir: str,
    moe: MoEConfig,
    *,
    model_class: type | None = None,
    overwrite: bool = False,
    before_writing: Callable[[PreTrainedModel], None] | None = None,
    **hf_kwargs: Any,
) -> PreTrainedModel:
    """Patch a dense checkpoint and save it (with its tokenizer, when it has one) without training.

    `output_dir` is never the input itself, and a folder that holds a model or a run is replaced (its own files
    only) only with `overwrite`: a run's `results.json` would otherwise describe weights it no longer holds.
    `before_writing` sees the patched model before anything is written (the CLI prints its size there).
    """
    out = _model_folder(name_or_path, output_dir, overwrite=overwrite, action="converted")
    revision = hub_commit(name_or_path, **hf_kwargs)  # the model and its tokenizer from one commit
    hf_kwargs = {**hf_kwargs, "revision": revision} if revision else hf_kwargs
    model = from_pretrained(name_or_path, moe=moe, model_class=model_class, **hf_kwargs)
    if before_writing is not None:
        before_writing(model)
    _write_model_folder(out, name_or_path, model.save_pretrained, overwrite=overwrite, revision=revision)
    return model


def export(name_or_path: str, output_dir: str, *, overwrite: bool = False) -> PreTrainedModel:
    """Write a patched checkpoint in its family's native MoE format (`adamoe.patching.export`), with its tokenizer.

    Checked before anything is written: the output folder (as for `convert`), and that the model can be exported.
    """
    from ..patching.export import check_exportable, export_native

    out = _model_folder(name_or_path, output_dir, overwrite=overwrite, action="exported")
    revision = hub_commit(name_or_path)  # the model and its tokenizer from one commit
    model = from_pretrained(name_or_path, **({"revision": revision} if revision else {}))
    check_exportable(model)
    return _write_model_folder(
        out, name_or_path, lambda folder: export_native(model, folder), overwrite=overwrite, revision=revision
    )


def _model_folder(name_or_path: str, output_dir: str, *, overwrite: bool, action: str) -> Path:
    """The checked output folder of a model written from `name_or_path`: never the input itself, and a folder
    that holds a model or a run is replaced (its own files only) only with `overwrite`."""
    source = Path(name_or_path).expanduser()
    out = check_output_dir(output_dir, overwrite=overwrite, resume=False, what="model")
    if source.exists() and source.resolve() == out:
        raise OutputDirError(f"--output-dir {output_dir} is the model being {action}; write it to a new folder.")
    return out


def _write_model_folder(
    out: Path, name_or_path: str, save: Callable[[str], Any], *, overwrite: bool, revision: str | None
) -> Any:
    """`save(folder)` into `out` under the folder's lock, then the source's tokenizer (at the model's `revision`)
    beside it; returns what `save` returned."""
    with RunLock(out):
        check_output_dir(out, overwrite=overwrite, resume=False, what="model")
        clear_run_files(out)
        saved = save(str(out))
        honour_umask(out)
        try:
            load_tokenizer(name_or_path, revision=revision).save_pretrained(str(out))
        except (OSError, ValueError):
            logger.warning("%s has no tokenizer to copy; the checkpoint holds only the model.", name_or_path)
    return saved
