"""Run-config dictionaries: the packaged paper config of a task, and the section-wise merge that layers a cell's
override and a scale's overlay over it (`experiments` and `smoke` both build configs this way)."""

from __future__ import annotations

import copy
from typing import Any

from ..run_config import FinetuneConfig


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` laid over it: nested mappings merge key by key, anything else (None included)
    replaces. Neither argument is modified.

    Example:
        ```python
        >>> deep_merge({"moe": {"gating": "adaptive", "threshold": 0.1}}, {"moe": {"gating": "top2"}})
        {'moe': {'gating': 'top2', 'threshold': 0.1}}
        >>> deep_merge({"moe": {"gating": "adaptive"}}, {"moe": None})   # the dense baseline
        {'moe': None}
        ```
    """
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def packaged_run_config(task: str) -> dict[str, Any]:
    """The paper's run config for `task` (`adamoe/configs/<task>.yaml`) as nested sections, defaults filled in."""
    values = FinetuneConfig.from_yaml(task).to_dict()
    values.pop("output_dir")  # the packaged default; every caller chooses its own
    return values
