"""Shared fixtures. The architecture table lives in `tiny_models.py` so test modules can import it.

The suite never needs the Hugging Face Hub, so it runs in huggingface_hub's offline mode, set here before
anything reads it and inherited by the subprocesses some tests start: a test that reached for the Hub by
mistake fails at once instead of waiting on retries, and no result depends on the network around CI.
Everything the tests cache goes to a temporary folder of the run (see below), not to ~/.cache.
Tests of the online paths switch it off themselves (`tests/cli/test_hub_probe.py`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
# Tests leave no trace outside their temporary folders: the datasets and Hub caches they fill (tokenized splits,
# Arrow files) go to a folder of this test run, removed when it ends.
_CACHE = tempfile.mkdtemp(prefix="adamoe-tests-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["HF_HOME"] = _CACHE
os.environ["HF_DATASETS_CACHE"] = os.path.join(_CACHE, "datasets")
os.environ["MPLCONFIGDIR"] = os.path.join(_CACHE, "matplotlib")

import pytest  # noqa: E402
from tiny_models import ARCHITECTURES, Arch  # noqa: E402


@pytest.fixture
def gpt2_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """Byte-level BPE tokenizer with no merges (one token per byte) and GPT-2's `<|endoftext|>` EOS.

    Function-scoped: the causal-LM collator sets its pad token, which must not leak between tests.
    """
    import json

    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import GPT2Tokenizer

    folder = tmp_path_factory.mktemp("gpt2_tokenizer")
    vocab = {char: i for i, char in enumerate(sorted(ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return GPT2Tokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="session")
def smoke_kit(tmp_path_factory: pytest.TempPathFactory):
    """One offline kit (`adamoe.smoke`) per test session, shared by the analysis, kit and reproduce tests."""
    from adamoe.smoke import write_smoke_kit

    return write_smoke_kit(tmp_path_factory.mktemp("smoke_kit"))


@pytest.fixture
def single_thread():
    """Tiny models train ~10x faster on one thread of a shared CPU (see `adamoe.smoke.one_thread`)."""
    from adamoe.smoke import one_thread

    with one_thread():
        yield


@pytest.fixture(params=ARCHITECTURES, ids=[a.name for a in ARCHITECTURES])
def arch(request) -> Arch:
    return request.param
