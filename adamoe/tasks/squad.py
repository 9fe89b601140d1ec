"""Extractive question answering: SQuAD v1.1, bert-base-uncased, F1 (paper Table 3, "BERT / SQuAD / F1").

As in HF `run_qa.py`: a long context is split into overlapping windows (`max_seq_length` 384 tokens,
`doc_stride` 128 overlap), each window a feature labelled with the answer's token span (or the CLS token when
the answer is outside it). Post-processing maps the best start/end logits of all an example's windows back
to a character span of the context (n-best 20, at most 30 tokens), scored with the official v1.1 exact match
and F1. Evaluation features carry the same span labels, so a plain `Trainer` reports an eval loss and calls
`compute_metrics`, which does the post-processing itself: no QA-specific trainer is needed.

Local files: the official nested JSON (`{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}`) or the Hub
schema (`id, title, context, question, answers{text, answer_start}`) as JSON/JSONL/Parquet.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import DataArgs, MetricsFn, PreparedData, Task, padding_collator, tokenize_split
from .io import DataFormatError, Schema, TaskInputError, check_columns, check_file, read_rows
from .metrics import squad_metrics

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import EvalPrediction, PretrainedConfig, PreTrainedTokenizerBase

SCHEMA = Schema(
    columns=("id", "context", "question", "answers"),
    example={
        "id": "q1",
        "title": "Paris",
        "context": "Paris is the capital of France.",
        "question": "What is the capital of France?",
        "answers": {"text": ["Paris"], "answer_start": [0]},
    },
    note="or the official nested SQuAD v1.1 JSON",
    text_columns=("context", "question"),
)
FORMATS = (".json", ".jsonl", ".parquet")
logger = logging.getLogger(__name__)
MAX_SEQ_LENGTH = 384  # run_qa.py's window (with doc_stride 128)
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions")


def flatten_squad(articles: list[dict]) -> list[dict]:
    """Rows in the Hub schema from the official nested `data` list (article > paragraphs > qas > answers)."""
    return [
        {
            "id": str(qa["id"]),
            "title": article.get("title", ""),
            "context": paragraph["context"],
            "question": qa["question"],
            "answers": {
                "text": [answer["text"] for answer in qa["answers"]],
                "answer_start": [_offset(answer["answer_start"]) for answer in qa["answers"]],
            },
        }
        for article in articles
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]


def _offset(value: Any) -> int:
    """A character offset as an int; -1 (which `check_answers` reports) for anything that is not one."""
    if isinstance(value, bool):
        return -1
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        return -1


def check_answers(rows: Dataset, source: str, *, skip_bad: bool = False) -> Dataset:
    """Raise `DataFormatError` naming the questions whose `answer_start` does not point at their answer text
    in the context (negative, out of range, not a number, or shifted); with `skip_bad`, drop them instead.

    Training labels are token spans found from these offsets: a wrong one teaches the model a wrong span.
    """
    bad = []
    for i, (context, answers) in enumerate(zip(rows["context"], rows["answers"], strict=True)):
        for text, start in zip(answers["text"], answers["answer_start"], strict=True):
            if not isinstance(start, int) or start < 0 or context[start : start + len(text)] != text:
                bad.append(i)
                break
    if not bad:
        return rows
    ids = [rows[i]["id"] for i in bad[:5]]
    if skip_bad:
        logger.warning(f"{source}: dropped {len(bad)} of {len(rows)} questions whose answer_start is wrong: {ids}...")
        keep = sorted(set(range(len(rows))) - set(bad))
        return rows.select(keep)
    raise DataFormatError(
        f"{source}: {len(bad)} of {len(rows)} questions have an answer_start that does not point at the answer text "
        f"in the context (negative, out of range, not a number, or shifted), e.g. ids {ids}. Fix the offsets, or "
        "pass --skip-bad-examples to drop those questions."
    )


def read_squad_file(path: Path) -> Dataset:
    path = check_file(path, FORMATS)
    if path.suffix == ".json":
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:  # JSON lines, read below
            document = None
        if isinstance(document, dict) and "data" in document:
            try:
                rows = flatten_squad(document["data"])
            except (KeyError, TypeError) as err:
                raise DataFormatError(
                    f"{path}: nested SQuAD JSON without the field {err} (expected data > paragraphs > context, "
                    "qas > id, question, answers > text, answer_start)."
                ) from err
            from datasets import Dataset

            return check_columns(Dataset.from_list(rows), path, SCHEMA)
    return read_rows(path, SCHEMA, FORMATS)


def tokenize_windows(
    batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_length: int, stride: int, keep_offsets: bool
) -> dict[str, list]:
    """One feature per window of each context, labelled with the answer's token span (CLS when outside).

    With `keep_offsets`, features also keep `example_id` and an `offset_mapping` that is `None` outside the
    context, which is what post-processing needs to map logits back to context characters.
    """
    # The question goes first unless the tokenizer pads on the left (e.g. XLNet), so only the context is cut.
    pad_on_right = tokenizer.padding_side == "right"
    questions = [q.lstrip() for q in batch["question"]]  # some SQuAD questions start with much whitespace
    first, second = (questions, batch["context"]) if pad_on_right else (batch["context"], questions)
    features = tokenizer(
        first,
        second,
        truncation="only_second" if pad_on_right else "only_first",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    sample_map = features.pop("overflow_to_sample_mapping")  # feature -> example in this batch
    context_id = 1 if pad_on_right else 0
    features["start_positions"], features["end_positions"], features["example_id"] = [], [], []
    for i, offsets in enumerate(features["offset_mapping"]):
        sequence_ids = features.sequence_ids(i)
        input_ids = features["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        answers = batch["answers"][sample_map[i]]
        start, end = cls_index, cls_index
        if answers["answer_start"]:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            first_token = sequence_ids.index(context_id)
            last_token = len(sequence_ids) - 1 - sequence_ids[::-1].index(context_id)
            if offsets[first_token][0] <= start_char and offsets[last_token][1] >= end_char:
                start = first_token
                while start <= last_token and offsets[start][0] <= start_char:
                    start += 1
                end = last_token
                while end >= first_token and offsets[end][1] >= end_char:
                    end -= 1
                start, end = start - 1, end + 1
        features["start_positions"].append(start)
        features["end_positions"].append(end)
        features["example_id"].append(batch["id"][sample_map[i]])
        if keep_offsets:
            features["offset_mapping"][i] = [
                o if s == context_id else None for o, s in zip(offsets, sequence_ids, strict=True)
            ]
    if not keep_offsets:
        del features["offset_mapping"], features["example_id"]
    return features


def postprocess_predictions(
    examples: Dataset,
    features: Dataset,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    n_best_size: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """The best answer text per example from the start/end logits of all its windows (HF `utils_qa.py`).

    Args:
        examples: Raw examples with `id` and `context`.
        features: Their windows with `example_id` and `offset_mapping` (`None` outside the context).
        start_logits: `(num_features, seq_len)` start logits, row for row with `features`; positions past a
            feature's length (batch padding) are ignored.
        end_logits: `(num_features, seq_len)` end logits.
        n_best_size: Top start and end positions per window to pair up.
        max_answer_length: Longest answer in tokens.

    Returns:
        `{example id: answer text}`; "" when no window has a valid span.
    """
    if len(features) != len(start_logits) or len(features) != len(end_logits):
        raise ValueError(f"{len(features)} features but {len(start_logits)}/{len(end_logits)} rows of logits.")
    windows = defaultdict(list)
    for index, example_id in enumerate(features["example_id"]):
        windows[example_id].append(index)
    all_offsets = list(features["offset_mapping"])  # one read; indexing a datasets Column reads row by row
    predictions = {}
    for example_id, context in zip(examples["id"], examples["context"], strict=True):
        best_score, best_text = -np.inf, ""
        for index in windows[example_id]:
            offsets, starts, ends = all_offsets[index], start_logits[index], end_logits[index]
            best_starts, best_ends = np.argsort(starts)[::-1][:n_best_size], np.argsort(ends)[::-1][:n_best_size]
            for start in best_starts:
                for end in best_ends:
                    # Skip spans outside the window's context, reversed, or too long.
                    if start >= len(offsets) or end >= len(offsets) or offsets[start] is None or offsets[end] is None:
                        continue
                    if end < start or end - start + 1 > max_answer_length:
                        continue
                    score = starts[start] + ends[end]
                    if score > best_score:
                        best_score, best_text = score, context[offsets[start][0] : offsets[end][1]]
        predictions[example_id] = best_text
    return predictions


def preprocess(
    raw: DatasetDict, tokenizer: PreTrainedTokenizerBase, data: DataArgs, model_config: PretrainedConfig | None = None
) -> PreparedData:
    if not tokenizer.is_fast:
        raise TaskInputError("squad needs a fast (Rust-backed) tokenizer: windows map back through offset mappings.")
    max_length = data.max_seq_length or MAX_SEQ_LENGTH
    if data.doc_stride >= max_length:
        raise TaskInputError(f"doc_stride ({data.doc_stride}) must be smaller than max_seq_length ({max_length}).")
    windows = partial(tokenize_windows, tokenizer=tokenizer, max_length=max_length, stride=data.doc_stride)
    train = tokenize_split(raw, "train", partial(windows, keep_offsets=False), data)
    eval_features = tokenize_split(raw, "validation", partial(windows, keep_offsets=True), data)
    eval_inputs = None
    if eval_features is not None:
        eval_inputs = eval_features.remove_columns([c for c in eval_features.column_names if c not in MODEL_INPUTS])
    return PreparedData(
        train=train, eval=eval_inputs, eval_examples=raw.get("validation"), eval_features=eval_features
    )


def answers(eval_pred: EvalPrediction, prepared: PreparedData, data: DataArgs) -> dict[str, str]:
    """`{question id: answer text}` post-processed from `(start_logits, end_logits)` over `prepared.eval`.

    The final evaluation scores the logits (compute_metrics) and then writes the same logits' answers
    (prediction_files): one post-processing pass serves both, kept in `prepared.cache`. Weak references: a dead
    array's id can be reused, a dead reference cannot match.
    """
    start_logits, end_logits = eval_pred.predictions[:2]
    settings = (data.n_best_size, data.max_answer_length)
    recent = prepared.cache.get("answers")
    if recent is not None:
        refs, recent_settings, found = recent
        if recent_settings == settings and all(
            ref() is obj for ref, obj in zip(refs, (start_logits, end_logits), strict=True)
        ):
            return found
    found = postprocess_predictions(
        prepared.eval_examples,
        prepared.eval_features,
        start_logits,
        end_logits,
        n_best_size=data.n_best_size,
        max_answer_length=data.max_answer_length,
    )
    try:
        prepared.cache["answers"] = (tuple(weakref.ref(obj) for obj in (start_logits, end_logits)), settings, found)
    except TypeError:  # logits as plain lists: nothing to recognise them by
        prepared.cache.pop("answers", None)
    return found


def compute_metrics(prepared: PreparedData, tokenizer: PreTrainedTokenizerBase, data: DataArgs) -> MetricsFn:
    """Post-processes `(start_logits, end_logits)` over `prepared.eval` and scores against the gold answers.

    The label ids the Trainer passes (window span labels) are ignored: a question is scored against all
    of its gold answers, on the text recovered across all of its windows.
    """

    def compute(eval_pred: EvalPrediction) -> dict[str, float]:
        predictions = answers(eval_pred, prepared, data)
        examples = prepared.eval_examples
        return squad_metrics(
            [{"id": i, "prediction_text": text} for i, text in predictions.items()],
            [{"id": i, "answers": a} for i, a in zip(examples["id"], examples["answers"], strict=True)],
        )

    return compute


def prediction_files(
    predictions: EvalPrediction, prepared: PreparedData, tokenizer: Any, data: DataArgs, model: Any = None
) -> dict[str, str]:
    """`eval_predictions.json`: `{question id: answer text}`, what the official v1.1 `evaluate-v1.1.py` reads."""
    found = answers(predictions, prepared, data)
    return {"eval_predictions.json": json.dumps(found, indent=2, ensure_ascii=False) + "\n"}


SQUAD = Task(
    name="squad",
    description="Extractive question answering over Wikipedia paragraphs (SQuAD v1.1).",
    kind="qa",
    hub_dataset=("rajpurkar/squad", None),
    hub_task_type="question-answering",
    default_model="bert-base-uncased",
    default_dataset="SQuAD v1.1 (rajpurkar/squad)",
    metric_names=("exact_match", "f1"),
    main_metric="f1",
    greater_is_better=True,
    auto_model="AutoModelForQuestionAnswering",
    read_file=read_squad_file,
    offline_example=("train-v1.1.json", "dev-v1.1.json"),
    check_rows=lambda rows, source, data: check_answers(rows, source, skip_bad=data.skip_bad_examples),
    preprocess=preprocess,
    compute_metrics=compute_metrics,
    prediction_files=prediction_files,
    data_collator=padding_collator,
    # Named explicitly because a wrapped model's forward signature may not show the span label names.
    extra_training_arguments=lambda data: {"label_names": ["start_positions", "end_positions"]},
)
