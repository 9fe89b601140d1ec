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
from typing import TYPE_CHECKING, Any

from .base import DataArgs, MetricsFn, PreparedData, TaskKind, lazy_import, load_splits
from .io import DataFormatError, Schema, read_rows
from .metrics import sacrebleu_score
from .seq2seq import (
    LANGUAGE_NAMES,
    generated_prediction_files,
    generation_metrics,
    generation_overrides,
    prepare_pairs,
    seq2seq_collator,
    source_prefix,
)

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import EvalPrediction, PretrainedConfig, PreTrainedTokenizerBase

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
    """Raises `ValueError` when an FSMT model translates the other way (it would score BLEU near zero)."""
    langs = list(getattr(model_config, "langs", None) or [])
    if getattr(model_config, "model_type", None) == "fsmt" and langs and langs != [source, target]:
        raise ValueError(
            f"The model translates {langs[0]}-{langs[1]} but direction is {source}-{target}; "
            f"use facebook/wmt19-{source}-{target} or set direction to {langs[0]}-{langs[1]}."
        )


class WMT19Task:
    name = "wmt19"
    description = "German-English news translation (WMT19), de-en or en-de."
    kind: TaskKind = "seq2seq"
    hub_dataset = ("wmt/wmt19", "de-en")  # (path, config) of the default data on the Hub
    hub_task_type = "translation"  # the Hub's task type, for model cards
    default_model = "facebook/wmt19-de-en"
    default_dataset = "WMT19 de-en (wmt/wmt19, de-en)"
    metric_names = ("bleu", "gen_len")
    main_metric = "bleu"
    greater_is_better = True
    # FSMT is in the seq2seq auto mapping (transformers >= 5), so one class covers FSMT, T5, BART, Marian.
    model_class = lazy_import("transformers", "AutoModelForSeq2SeqLM")
    model_kwargs: dict[str, Any] = {}
    preprocess_logits_for_metrics = None

    def load_raw(self, data: DataArgs) -> DatasetDict:
        return load_splits(
            data,
            task=self.name,
            hub=self.hub_dataset,
            read_file=read_translation_file,
            offline_example=("train.jsonl", "valid.jsonl"),
        )

    def preprocess(
        self,
        raw: DatasetDict,
        tokenizer: PreTrainedTokenizerBase,
        data: DataArgs,
        model_config: PretrainedConfig | None = None,
    ) -> PreparedData:
        source, target = data.direction.split("-")
        check_model_direction(model_config, source, target)
        prefix = source_prefix(
            data, model_config, "translation", source=LANGUAGE_NAMES[source], target=LANGUAGE_NAMES[target]
        )

        def pairs(batch: dict[str, list]) -> tuple[list[str], list[str]]:
            return [pair[source] for pair in batch["translation"]], [pair[target] for pair in batch["translation"]]

        return prepare_pairs(
            raw,
            tokenizer,
            data,
            pairs,
            prefix=prefix,
            max_source_length=data.max_source_length or MAX_SOURCE_LENGTH,
            max_target_length=data.max_target_length or MAX_TARGET_LENGTH,
        )

    def data_collator(self, tokenizer: PreTrainedTokenizerBase, model: Any = None) -> Any:
        return seq2seq_collator(tokenizer, model)

    def compute_metrics(self, prepared: PreparedData, tokenizer: PreTrainedTokenizerBase, data: DataArgs) -> MetricsFn:
        return generation_metrics(lambda preds, refs: {"bleu": sacrebleu_score(preds, refs)}, tokenizer)

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
