"""`TASKS`: the six tasks of the paper (Table 2), by name. Adding a task = one module and one line here."""

from __future__ import annotations

from .base import Task
from .cnn_dailymail import CNNDailyMailTask
from .soda import SodaTask
from .squad import SquadTask
from .sst2 import SST2Task
from .wikitext import WikiTextTask
from .wmt19 import WMT19Task

TASKS: dict[str, Task] = {
    "sst2": SST2Task(),
    "squad": SquadTask(),
    "wmt19": WMT19Task(),
    "cnn_dailymail": CNNDailyMailTask(),
    "wikitext": WikiTextTask(),
    "soda": SodaTask(),
}


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
