"""Reproducing the paper's tables: the smoke kit, the experiment files, the runner and the table generator."""

from .runner import ReproduceReport, reproduce
from .smoke import SmokeTask, write_smoke_kit

__all__ = ["ReproduceReport", "SmokeTask", "reproduce", "write_smoke_kit"]
