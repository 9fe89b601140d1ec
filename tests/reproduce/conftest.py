"""One smoke kit per test session, shared by the reproduce tests (writing it takes about a second)."""

from __future__ import annotations

import pytest

from adamoe.reproduce.smoke import SmokeTask, one_thread, write_smoke_kit


@pytest.fixture(scope="session")
def smoke_kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SmokeTask]:
    return write_smoke_kit(tmp_path_factory.mktemp("smoke_kit"))


@pytest.fixture
def single_thread():
    """Tiny models train ~10x faster on one thread of a shared CPU (see `one_thread`)."""
    with one_thread():
        yield
