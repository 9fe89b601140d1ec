"""Shared fixtures. The architecture table lives in `tiny_models.py` so test modules can import it."""

from __future__ import annotations

import pytest
from tiny_models import ARCHITECTURES, Arch


@pytest.fixture(params=ARCHITECTURES, ids=[a.name for a in ARCHITECTURES])
def arch(request) -> Arch:
    return request.param
