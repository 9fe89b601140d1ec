"""Reproducing the paper's tables: the experiment files, the runner and the table generator (the smoke scale runs
on the offline kit, `adamoe.smoke`)."""

from ..smoke import SmokeTask, write_smoke_kit
from .runner import ReproduceReport, reproduce

__all__ = ["ReproduceReport", "SmokeTask", "reproduce", "write_smoke_kit"]
