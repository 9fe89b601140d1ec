"""Summarization: CNN/DailyMail 3.0.0, facebook/bart-large, ROUGE (paper Table 3, "BART / CNN/DM / ROUGE-1").

As in HF `run_summarization.py`: articles are the source (1024 tokens), highlights the target (128 tokens),
evaluation generates with `predict_with_generate`, and ROUGE-1/2/L/Lsum are `rouge_score` F-measures with
the Porter stemmer, averaged over articles, in percent. T5 models get the "summarize: " prefix.

Local files: the Hub schema (`article`, `highlights`, optional `id`) as JSON/JSONL/CSV/Parquet.
"""

from __future__ import annotations

from functools import partial

from .io import Schema, read_rows
from .metrics import ROUGE_TYPES, rouge_scores
from .prompting import PromptFormat
from .seq2seq import PairFormat, seq2seq_task

SCHEMA = Schema(
    columns=("article", "highlights"),
    example={"id": "0001", "article": "(CNN) The city council voted on Monday ...", "highlights": "Council votes."},
    text_columns=("article", "highlights"),
)
FORMATS = (".json", ".jsonl", ".csv", ".parquet")
# BART's 1024 positions hold nearly every article's lead; highlights average ~56 tokens.
MAX_SOURCE_LENGTH, MAX_TARGET_LENGTH = 1024, 128


CNN_DAILYMAIL = seq2seq_task(
    PairFormat(
        family="summarization",
        pairs=lambda batch, data: (batch["article"], batch["highlights"]),
        max_source_length=MAX_SOURCE_LENGTH,
        max_target_length=MAX_TARGET_LENGTH,
        prompt=PromptFormat("Summarize this news article in a few sentences.", "Summary:"),
    ),
    rouge_scores,
    read_file=partial(read_rows, schema=SCHEMA, formats=FORMATS),
    name="cnn_dailymail",
    description="Abstractive summarization of news articles into highlights (CNN/DailyMail 3.0.0).",
    hub_dataset=("abisee/cnn_dailymail", "3.0.0"),
    hub_task_type="summarization",
    default_model="facebook/bart-large",
    default_dataset="CNN/DailyMail 3.0.0 (abisee/cnn_dailymail)",
    metric_names=(*ROUGE_TYPES, "gen_len"),
    main_metric="rouge1",
    offline_example=("train.jsonl", "validation.jsonl"),
)
