"""The paper's six fine-tuning tasks behind one `Task` contract; see `base` for how a trainer drives them."""

from .base import DataArgs, PreparedData, Task, TaskKind
from .io import DataFormatError, HubUnreachableError, TaskInputError
from .metrics import (
    accuracy,
    perplexity,
    perplexity_from_losses,
    rouge_scores,
    sacrebleu_score,
    squad_exact_match,
    squad_f1,
    squad_metrics,
    squad_normalize_answer,
    token_nll,
)
from .registry import TASKS, get_task
from .squad import postprocess_predictions

__all__ = [
    "TASKS",
    "DataArgs",
    "DataFormatError",
    "HubUnreachableError",
    "PreparedData",
    "Task",
    "TaskInputError",
    "TaskKind",
    "accuracy",
    "get_task",
    "perplexity",
    "perplexity_from_losses",
    "postprocess_predictions",
    "rouge_scores",
    "sacrebleu_score",
    "squad_exact_match",
    "squad_f1",
    "squad_metrics",
    "squad_normalize_answer",
    "token_nll",
]
