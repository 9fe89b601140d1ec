"""Training adamoe models with the transformers Trainer: balance loss, routing logs, curriculum, timing."""

from .arguments import AdaMoESeq2SeqTrainingArguments, AdaMoETrainingArguments
from .curriculum import CurriculumSampler, curriculum_order
from .indexing import SAMPLE_INDEX_KEY, IndexCollator, IndexedDataset
from .meters import RoutingMeter
from .timing import TimingCallback, count_tokens
from .trainer import (
    CURRICULUM_STATE_NAME,
    TIMING_STATE_NAME,
    AdaMoESeq2SeqTrainer,
    AdaMoETrainer,
    AdaMoETrainerMixin,
)

__all__ = [
    "CURRICULUM_STATE_NAME",
    "SAMPLE_INDEX_KEY",
    "TIMING_STATE_NAME",
    "AdaMoESeq2SeqTrainer",
    "AdaMoESeq2SeqTrainingArguments",
    "AdaMoETrainer",
    "AdaMoETrainerMixin",
    "AdaMoETrainingArguments",
    "CurriculumSampler",
    "IndexCollator",
    "IndexedDataset",
    "RoutingMeter",
    "TimingCallback",
    "count_tokens",
    "curriculum_order",
]
