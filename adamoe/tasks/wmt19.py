"""Translation: WMT19 German-English, facebook/wmt19-de-en (FSMT), sacreBLEU (paper Table 3, "FSMT / WMT19 / BLEU").

As in HF `run_translation.py`: source and target sentences are tokenized separately (the target as
`text_target`; FSMT's tokenizer has no target mode, so its targets go through the target vocabulary by
`seq2seq.fsmt_target_ids`), evaluation generates with
`predict_with_generate`, and BLEU is `sacrebleu.corpus_bleu` on the detokenized output. `direction` picks
de-en (default) or en-de; en-de needs an en-de model (facebook/wmt19-en-de). T5 models get the
"translate German to English: " prefix.

Local files: the Hub schema `{"translation": {"de": ..., "en": ...}}` as JSON/JSONL/Parquet, or flat `de`
and `en` columns as CSV/TSV.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .base import DataArgs
from .io import DataFormatError, Schema, TaskInputError, read_rows
from .metrics import sacrebleu_score
from .prompting import PromptFormat
from .seq2seq import LANGUAGE_NAMES, PairFormat, seq2seq_task

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PretrainedConfig

SCHEMA = Schema(
    columns=("translation",),
    example={"translation": {"de": "Guten Morgen.", "en": "Good morning."}},
    note="or flat 'de' and 'en' columns in CSV/TSV",
)
FLAT_SCHEMA = Schema(columns=("de", "en"), example={"de": "Guten Morgen.", "en": "Good morning."})
FORMATS = (".json", ".jsonl", ".parquet", ".csv", ".tsv")
# Sentence-level news translation: 256 tokens covers nearly every WMT sentence on both sides.
MAX_SOURCE_LENGTH, MAX_TARGET_LENGTH = 256, 256


def read_translation_file(path: Path) -> Dataset:
    """Reads translation pairs, turning flat `de`/`en` columns (CSV/TSV) into the Hub's `translation` dicts."""
    flat = path.suffix in (".csv", ".tsv")
    rows = read_rows(path, FLAT_SCHEMA if flat else SCHEMA, FORMATS)
    if flat:
        rows = rows.map(lambda row: {"translation": {"de": row["de"], "en": row["en"]}}, remove_columns=["de", "en"])
    pair = rows[0]["translation"]
    if not isinstance(pair, dict) or not {"de", "en"} <= set(pair):
        raise DataFormatError(f"{path}: 'translation' must hold 'de' and 'en'; first row has {pair!r}.")
    return rows


def check_model_direction(model_config: PretrainedConfig | None, source: str, target: str) -> None:
    """Raises `TaskInputError` when an FSMT model translates the other way (it would score BLEU near zero)."""
    langs = list(getattr(model_config, "langs", None) or [])
    if getattr(model_config, "model_type", None) == "fsmt" and langs and langs != [source, target]:
        raise TaskInputError(
            f"The model translates {langs[0]}-{langs[1]} but direction is {source}-{target}; "
            f"use facebook/wmt19-{source}-{target} or set direction to {langs[0]}-{langs[1]}."
        )


def translation_pairs(batch: dict[str, list], data: DataArgs) -> tuple[list[str], list[str]]:
    source, target = data.direction.split("-")
    return [pair[source] for pair in batch["translation"]], [pair[target] for pair in batch["translation"]]


def language_names(data: DataArgs) -> dict[str, str]:
    source, target = data.direction.split("-")
    return {"source": LANGUAGE_NAMES[source], "target": LANGUAGE_NAMES[target]}


WMT19 = seq2seq_task(
    PairFormat(
        family="translation",
        pairs=translation_pairs,
        max_source_length=MAX_SOURCE_LENGTH,
        max_target_length=MAX_TARGET_LENGTH,
        prompt=PromptFormat("Translate this {source} text into {target}.", "{target}:"),
        prefix_fields=language_names,
        check_model=lambda model_config, data: check_model_direction(model_config, *data.direction.split("-")),
    ),
    lambda predictions, references: {"bleu": sacrebleu_score(predictions, references)},
    read_file=read_translation_file,
    name="wmt19",
    description="German-English news translation (WMT19), de-en or en-de.",
    hub_dataset=("wmt/wmt19", "de-en"),
    hub_task_type="translation",
    default_model="facebook/wmt19-de-en",
    default_dataset="WMT19 de-en (wmt/wmt19, de-en)",
    metric_names=("bleu", "gen_len"),
    main_metric="bleu",
    offline_example=("train.jsonl", "valid.jsonl"),
)
