"""A `.gguf` file as a model input (adamoe/patching/gguf.py): what is checked before anything loads or is written.

The files are written here with the gguf package's own writer; the real SmolLM2 GGUF is in test_real_llama.py.
"""

import importlib.util

import numpy as np
import pytest
from typer.testing import CliRunner

gguf = pytest.importorskip("gguf", reason="the gguf package (pip install 'adamoe[gguf]') reads GGUF files")

from adamoe.cli import app  # noqa: E402
from adamoe.patching.gguf import GGUFError, check_gguf, gguf_source  # noqa: E402


def write_gguf(path, architecture="llama"):
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_architecture_is_read_from_the_header(tmp_path):
    assert check_gguf(str(write_gguf(tmp_path / "m.gguf", "qwen2"))) == "qwen2"


def test_a_local_file_and_a_hub_file_become_from_pretrained_arguments(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    assert gguf_source(str(path)) == (str(tmp_path), {"gguf_file": "m.gguf"})
    assert gguf_source("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2.Q4_1.gguf") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
        {"gguf_file": "smollm2.Q4_1.gguf"},
    )
    assert gguf_source("models/bert") == ("models/bert", {})
    assert check_gguf("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2.Q4_1.gguf") is None  # checked once fetched


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: write_gguf(p, "bert"), r"'bert' model, which transformers cannot dequantise.*llama"),
        (lambda p: p.write_bytes(b"not a model at all"), "is not a GGUF file"),
        (lambda p: p.write_bytes(write_gguf(p.with_name("whole.gguf")).read_bytes()[:200]), "truncated or corrupt"),
        (lambda p: p.mkdir(), "is a folder, not a GGUF file"),
        (lambda p: None, "does not exist"),
    ],
    ids=["architecture", "not-gguf", "truncated", "folder", "missing"],
)
def test_a_bad_gguf_is_refused_with_what_to_do(tmp_path, write, message):
    path = tmp_path / "m.gguf"
    write(path)
    with pytest.raises(GGUFError, match=message):
        check_gguf(str(path))


def test_without_the_gguf_package_the_extra_is_named(tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "m.gguf")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else find_spec(name, *a))
    with pytest.raises(GGUFError, match=r"adamoe\[gguf\]"):
        check_gguf(str(path))


@pytest.mark.parametrize("command", ["finetune", "convert"])
def test_the_cli_refuses_a_bad_gguf_before_the_output_folder_exists(tmp_path, command):
    model = write_gguf(tmp_path / "m.gguf", "bert")
    out = tmp_path / "out"
    args = ["--model", str(model), "--output-dir", str(out)]
    args += ["--task", "wikitext", "--train-file", str(model)] if command == "finetune" else []
    result = CliRunner().invoke(app, [command, *args])
    assert result.exit_code == 2, result.output
    assert "cannot dequantise" in result.output and "Traceback" not in result.output
    assert not out.exists()
