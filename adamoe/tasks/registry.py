"""`TASKS`: the six tasks of the paper (Table 2), by name. Adding a task = one module and one line here."""

from __future__ import annotations

from .base import Task
from .cnn_dailymail import CNN_DAILYMAIL
from .soda import SODA
from .squad import SQUAD
from .sst2 import SST2
from .wikitext import WIKITEXT
from .wmt19 import WMT19

TASKS: dict[str, Task] = {task.name: task for task in (SST2, SQUAD, WMT19, CNN_DAILYMAIL, WIKITEXT, SODA)}


def get_task(name: str) -> Task:
    """The task registered as `name`.

    Raises:
        KeyError: `name` is not a registered task; the message lists the ones that are.

    Example:
        ```python
        >>> get_task("sst2").main_metric
        'accuracy'
        ```
    """
    if name not in TASKS:
        raise KeyError(f"Unknown task {name!r}; available: {', '.join(TASKS)}.")
    return TASKS[name]
