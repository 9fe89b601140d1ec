"""Routing analysis of a trained adamoe checkpoint: the paper's Figures 1 and 2 and Table 4 (`analyze`)."""

from .collect import RoutingCollection, collect_routing
from .report import AnalysisReport, analyze, checkpoint_data
from .views import Example, build_view, collate
from .words import WordStats, top_words, word_stats

__all__ = [
    "AnalysisReport",
    "Example",
    "RoutingCollection",
    "WordStats",
    "analyze",
    "build_view",
    "checkpoint_data",
    "collate",
    "collect_routing",
    "top_words",
    "word_stats",
]
