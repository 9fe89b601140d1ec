"""SST-2 sentiment classification: GLUE SST-2, bert-base-uncased, accuracy (paper Table 3, "BERT / SST-2 / Acc").

Single sentences with binary labels (0 negative, 1 positive), tokenized as in HF `run_glue.py` and padded per
batch. Local files: the GLUE TSV (`sentence<TAB>label` with a header row) or the Hub schema as CSV/JSON/
JSONL/Parquet.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import DataArgs, MetricsFn, PreparedData, Task, logits_of, padding_collator, prepare_splits
from .io import DataFormatError, Schema, read_rows
from .metrics import accuracy

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import EvalPrediction, PretrainedConfig, PreTrainedTokenizerBase

SCHEMA = Schema(
    columns=("sentence", "label"),
    example={"sentence": "a gripping , funny film", "label": 1},
    note="GLUE TSV with a header row; label 0 = negative, 1 = positive",
    text_columns=("sentence",),
)
FORMATS = (".tsv", ".csv", ".json", ".jsonl", ".parquet")
LABELS = {0: "negative", 1: "positive"}
MAX_SEQ_LENGTH = 128  # run_glue.py's default; SST-2 sentences are far shorter


def check_labels(rows: Dataset, source: str) -> Dataset:
    """Raises `DataFormatError` unless every label is 0 or 1 (the Hub's unlabeled test split uses -1)."""
    found = set(rows.unique("label"))
    if not found <= set(LABELS):
        bad = sorted(found - set(LABELS), key=str)[:5]
        rows_at = [i for i, label in enumerate(rows["label"]) if label not in LABELS][:5]
        raise DataFormatError(
            f"{source}: SST-2 labels must be 0 (negative) or 1 (positive); found {bad} (rows {rows_at}, counting "
            "from 0 after the header). Fix or drop those rows (the Hub's test split is unlabeled, -1: evaluate on "
            "the validation split instead)."
        )
    return rows


def preprocess(
    raw: DatasetDict, tokenizer: PreTrainedTokenizerBase, data: DataArgs, model_config: PretrainedConfig | None = None
) -> PreparedData:
    max_length = data.max_seq_length or MAX_SEQ_LENGTH

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        features = tokenizer(batch["sentence"], max_length=max_length, truncation=True)
        features["labels"] = [int(label) for label in batch["label"]]  # a float 1.0 would mean regression
        return features

    return prepare_splits(raw, tokenize, data)


def compute_metrics(prepared: PreparedData, tokenizer: PreTrainedTokenizerBase, data: DataArgs) -> MetricsFn:
    def compute(eval_pred: EvalPrediction) -> dict[str, float]:
        return {"accuracy": accuracy(np.argmax(logits_of(eval_pred), axis=-1), eval_pred.label_ids)}

    return compute


def prediction_files(predictions: EvalPrediction, *args: Any, **kwargs: Any) -> dict[str, str]:
    """`eval_predictions.tsv`: the GLUE submission format, `index<TAB>prediction` with 0/1 labels."""
    labels = np.argmax(logits_of(predictions), axis=-1)
    rows = "".join(f"{i}\t{int(label)}\n" for i, label in enumerate(labels))
    return {"eval_predictions.tsv": "index\tprediction\n" + rows}


SST2 = Task(
    name="sst2",
    description="Binary sentiment classification of movie-review sentences (GLUE SST-2).",
    kind="classification",
    hub_dataset=("nyu-mll/glue", "sst2"),
    hub_task_type="text-classification",
    default_model="bert-base-uncased",
    default_dataset="GLUE SST-2 (nyu-mll/glue, sst2)",
    metric_names=("accuracy",),
    main_metric="accuracy",
    greater_is_better=True,
    auto_model="AutoModelForSequenceClassification",
    read_file=partial(read_rows, schema=SCHEMA, formats=FORMATS),
    offline_example=("train.tsv", "dev.tsv"),
    check_rows=lambda rows, source, data: check_labels(rows, source),
    preprocess=preprocess,
    compute_metrics=compute_metrics,
    prediction_files=prediction_files,
    data_collator=padding_collator,
    model_kwargs={"num_labels": 2, "id2label": LABELS, "label2id": {name: i for i, name in LABELS.items()}},
)
