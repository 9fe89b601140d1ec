"""Without a network, Hub-bound commands go offline at once instead of retrying for half a minute."""

import socket

import datasets
import pytest
from huggingface_hub import constants
from huggingface_hub.utils import _http
from typer.testing import CliRunner

from adamoe.cli import _hub, app


@pytest.fixture
def online_settings(monkeypatch):
    """A process that believes it is online and has no proxy, whatever the test machine's environment says."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    for name in _hub.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_probe_tells_a_listening_endpoint_from_a_closed_one():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert _hub.hub_reachable(f"http://127.0.0.1:{port}")
    assert not _hub.hub_reachable(f"http://127.0.0.1:{port}", timeout=0.5)  # closed now: connection refused


def test_unreachable_hub_means_offline_mode_inside_and_the_old_settings_after(online_settings, monkeypatch):
    monkeypatch.setattr(_hub, "hub_reachable", lambda: False)
    with _hub.offline_when_hub_unreachable():
        assert constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE
    assert not constants.HF_HUB_OFFLINE and not datasets.config.HF_HUB_OFFLINE


def test_no_probe_behind_a_proxy_or_when_already_offline(online_settings, monkeypatch):
    def probe():
        raise AssertionError("probed")

    monkeypatch.setattr(_hub, "hub_reachable", probe)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    with _hub.offline_when_hub_unreachable():
        assert not constants.HF_HUB_OFFLINE
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with _hub.offline_when_hub_unreachable():
        pass


def test_finetune_without_a_network_fails_fast_with_the_offline_form(online_settings, monkeypatch, tmp_path):
    monkeypatch.setattr(_hub, "hub_reachable", lambda: False)
    # Every Hub request goes through huggingface_hub's retrying helper; offline, none may be made.
    requests = []
    monkeypatch.setattr(_http, "_http_backoff_base", lambda *args, **kwargs: requests.append(args) or 1 / 0)
    result = CliRunner().invoke(
        app,
        ["finetune", "--task", "sst2", "--model", "no-such-org/no-such-model", "--output-dir", str(tmp_path / "r")],
    )
    assert result.exit_code == 2, result.output
    assert "adamoe finetune --task sst2 --model PATH --train-file TRAIN --validation-file VALIDATION" in result.output
    assert requests == []
    assert not constants.HF_HUB_OFFLINE
    assert not (tmp_path / "r").exists()
