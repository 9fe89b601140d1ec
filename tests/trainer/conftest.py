"""Fixtures for the trainer tests."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def train_kwargs(tmp_path: Any) -> dict[str, Any]:
    """TrainingArguments keywords for fast, quiet CPU runs."""
    return {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
    }
