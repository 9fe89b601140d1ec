"""Training adamoe models with the transformers Trainer: balance loss, routing logs, curriculum, token-budget
batches, timing."""

from .arguments import AdaMoESeq2SeqTrainingArguments, AdaMoETrainingArguments
from .batching import TokenBudgetBatchSampler, token_budget_batches
from .checkpointing import AtomicCheckpointMixin, NonFiniteWeightsError
from .curriculum import CurriculumSampler, curriculum_order
from .data_order import DataOrderMixin
from .indexing import SAMPLE_INDEX_KEY, IndexCollator, IndexedDataset
from .meters import RoutingMeter
from .state import CURRICULUM_STATE_NAME, LOSS_STATE_NAME, TIMING_STATE_NAME, RunState
from .timing import TimingCallback, count_tokens
from .trainer import AdaMoESeq2SeqTrainer, AdaMoETrainer, AdaMoETrainerMixin

__all__ = [
    "CURRICULUM_STATE_NAME",
    "LOSS_STATE_NAME",
    "RunState",
    "SAMPLE_INDEX_KEY",
    "TIMING_STATE_NAME",
    "AdaMoESeq2SeqTrainer",
    "AdaMoESeq2SeqTrainingArguments",
    "AdaMoETrainer",
    "AdaMoETrainerMixin",
    "AdaMoETrainingArguments",
    "AtomicCheckpointMixin",
    "DataOrderMixin",
    "NonFiniteWeightsError",
    "CurriculumSampler",
    "IndexCollator",
    "IndexedDataset",
    "RoutingMeter",
    "TimingCallback",
    "TokenBudgetBatchSampler",
    "count_tokens",
    "curriculum_order",
    "token_budget_batches",
]
