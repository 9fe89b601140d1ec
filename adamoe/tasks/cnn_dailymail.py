"""Summarization: CNN/DailyMail 3.0.0, facebook/bart-large, ROUGE (paper Table 3, "BART / CNN/DM / ROUGE-1").

As in HF `run_summarization.py`: articles are the source (1024 tokens), highlights the target (128 tokens),
evaluation generates with `predict_with_generate`, and ROUGE-1/2/L/Lsum are `rouge_score` F-measures with
the Porter stemmer, averaged over articles, in percent. T5 models get the "summarize: " prefix.

Local files: the Hub schema (`article`, `highlights`, optional `id`) as JSON/JSONL/CSV/Parquet.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from .base import DataArgs, MetricsFn, PreparedData, TaskKind, lazy_import, load_splits
from .io import Schema, read_rows
from .metrics import ROUGE_TYPES, rouge_scores
from .seq2seq import (
    generated_prediction_files,
    generation_metrics,
    generation_overrides,
    prepare_pairs,
    seq2seq_collator,
    source_prefix,
)

if TYPE_CHECKING:
    from datasets import DatasetDict
    from transformers import EvalPrediction, PretrainedConfig, PreTrainedTokenizerBase

SCHEMA = Schema(
    columns=("article", "highlights"),
    example={"id": "0001", "article": "(CNN) The city council voted on Monday ...", "highlights": "Council votes."},
    text_columns=("article", "highlights"),
)
FORMATS = (".json", ".jsonl", ".csv", ".parquet")
# BART's 1024 positions hold nearly every article's lead; highlights average ~56 tokens.
MAX_SOURCE_LENGTH, MAX_TARGET_LENGTH = 1024, 128


class CNNDailyMailTask:
    name = "cnn_dailymail"
    description = "Abstractive summarization of news articles into highlights (CNN/DailyMail 3.0.0)."
    kind: TaskKind = "seq2seq"
    hub_dataset = ("abisee/cnn_dailymail", "3.0.0")  # (path, config) of the default data on the Hub
    hub_task_type = "summarization"  # the Hub's task type, for model cards
    default_model = "facebook/bart-large"
    default_dataset = "CNN/DailyMail 3.0.0 (abisee/cnn_dailymail)"
    metric_names = (*ROUGE_TYPES, "gen_len")
    main_metric = "rouge1"
    greater_is_better = True
    model_class = lazy_import("transformers", "AutoModelForSeq2SeqLM")
    model_kwargs: dict[str, Any] = {}
    preprocess_logits_for_metrics = None

    def load_raw(self, data: DataArgs) -> DatasetDict:
        return load_splits(
            data,
            task=self.name,
            hub=self.hub_dataset,
            read_file=partial(read_rows, schema=SCHEMA, formats=FORMATS),
            offline_example=("train.jsonl", "validation.jsonl"),
        )

    def preprocess(
        self,
        raw: DatasetDict,
        tokenizer: PreTrainedTokenizerBase,
        data: DataArgs,
        model_config: PretrainedConfig | None = None,
    ) -> PreparedData:
        return prepare_pairs(
            raw,
            tokenizer,
            data,
            lambda batch: (batch["article"], batch["highlights"]),
            prefix=source_prefix(data, model_config, "summarization"),
            max_source_length=data.max_source_length or MAX_SOURCE_LENGTH,
            max_target_length=data.max_target_length or MAX_TARGET_LENGTH,
        )

    def data_collator(self, tokenizer: PreTrainedTokenizerBase, model: Any = None) -> Any:
        return seq2seq_collator(tokenizer, model)

    def compute_metrics(self, prepared: PreparedData, tokenizer: PreTrainedTokenizerBase, data: DataArgs) -> MetricsFn:
        return generation_metrics(rouge_scores, tokenizer)

    def prediction_files(
        self,
        predictions: EvalPrediction,
        prepared: PreparedData,
        tokenizer: PreTrainedTokenizerBase,
        data: DataArgs,
        model: Any = None,
    ) -> dict[str, str]:
        return generated_prediction_files(predictions, tokenizer)

    def training_overrides(self, data: DataArgs) -> dict[str, Any]:
        return generation_overrides(self.main_metric, data.max_target_length or MAX_TARGET_LENGTH, data.num_beams)
