"""Shared fixtures. The architecture table lives in `tiny_models.py` so test modules can import it.

The suite never needs the Hugging Face Hub, so it runs in huggingface_hub's offline mode, set here before
anything reads it and inherited by the subprocesses some tests start: a test that reached for the Hub by
mistake fails at once instead of waiting on retries, and no result depends on the network around CI.
Everything the tests cache goes to a temporary folder of the run (see below), not to ~/.cache.
Tests of the online paths switch it off themselves (`tests/cli/test_hub_probe.py`); those of pushing to and
loading from the Hub do so through the `fake_hub` fixture below, a local server that speaks the Hub's API.
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


@pytest.fixture
def fake_hub(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """A fake Hugging Face Hub (`hub_server.FakeHub`) on a free loopback port, for the tests of the Hub paths.

    Reached the way a user reaches a Hub mirror, through `HF_ENDPOINT`, online (`HF_HUB_OFFLINE` unset), with a
    token (`HF_TOKEN`) so pushes are allowed and a Hub cache of its own (`HF_HOME`), so every file a test loads
    comes from the server. Subprocesses inherit the environment; this process needs more, since huggingface_hub
    reads these variables into `huggingface_hub.constants` when it is imported and its module-level `HfApi`
    (and transformers' shared one) keep the endpoint they were built with: those are patched too. The server
    stops, and the settings come back, when the test ends.
    """
    import transformers.utils.hub
    from hub_server import FakeHub
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _detect_agent

    home = tmp_path_factory.mktemp("hf_home")
    with FakeHub() as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_TOKEN": "dummy"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN_PATH"):
            monkeypatch.delenv(name, raising=False)
        settings = {
            "ENDPOINT": hub.url,
            "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
            "HF_HUB_OFFLINE": False,
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(home / "hub"),
            "HF_ASSETS_CACHE": str(home / "assets"),
            "HF_XET_CACHE": str(home / "xet"),
            "HF_TOKEN_PATH": str(home / "token"),
            "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
            "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        }
        for name, value in settings.items():
            monkeypatch.setattr(constants, name, value)
        monkeypatch.setattr(hf_api.api, "endpoint", hub.url)  # behind `huggingface_hub.create_repo` & co.
        monkeypatch.setattr(_detect_agent, "_registry", None)  # fetched from the endpoint once per process
        monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)  # transformers builds its own on first use
        yield hub
