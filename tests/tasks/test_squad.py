"""SQuAD windows, span labels and post-processing on hand-made examples and logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import Dataset, DatasetDict
from transformers import EvalPrediction

from adamoe.tasks import TASKS, DataArgs
from adamoe.tasks.squad import postprocess_predictions

postprocess = postprocess_predictions  # the real one, for a counting wrapper

DATA = DataArgs(max_seq_length=20, doc_stride=4)  # see `squad_example` in conftest.py
ANSWER = "capital of france"


@pytest.fixture
def prepared(bert_tokenizer, squad_example):
    raw = DatasetDict({"train": Dataset.from_list([squad_example]), "validation": Dataset.from_list([squad_example])})
    return TASKS["squad"].preprocess(raw, bert_tokenizer, DATA)


def test_long_context_becomes_overlapping_windows_with_span_labels(prepared, bert_tokenizer):
    train = prepared.train
    assert len(train) == 2 and set(train.column_names) == {
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "start_positions",
        "end_positions",
    }
    assert all(len(ids) <= 20 for ids in train["input_ids"])
    # First window: the answer is not inside, so the span points at CLS.
    assert (train[0]["start_positions"], train[0]["end_positions"]) == (0, 0)
    second = train[1]
    span = second["input_ids"][second["start_positions"] : second["end_positions"] + 1]
    assert bert_tokenizer.decode(span) == ANSWER
    assert bert_tokenizer.decode(second["input_ids"]).startswith("[CLS] where is paris? [SEP]")  # stripped question


def test_eval_features_keep_ids_and_context_offsets(prepared):
    features = prepared.eval_features
    assert features["example_id"] == ["q1", "q1"]
    offsets = features[0]["offset_mapping"]
    assert offsets[:6] == [None] * 6  # CLS + 4 question tokens + SEP are not context
    assert prepared.eval_examples[0]["context"][slice(*offsets[6])] == "the"
    # The Trainer's eval_dataset holds model inputs only, row for row with the features.
    assert "offset_mapping" not in prepared.eval.column_names and len(prepared.eval) == len(features)
    assert prepared.eval["start_positions"] == features["start_positions"]


def test_postprocess_finds_the_answer_in_the_second_window(prepared):
    features = prepared.eval_features
    start_logits, end_logits = np.zeros((2, 20)), np.zeros((2, 20))
    # A decoy in the first window ("cat", score 3) loses to the answer in the second window (score 4).
    start_logits[0, 7], end_logits[0, 7] = 1.5, 1.5
    start_logits[1, features[1]["start_positions"]] = 2.0
    end_logits[1, features[1]["end_positions"]] = 2.0
    predictions = postprocess_predictions(prepared.eval_examples, features, start_logits, end_logits)
    assert predictions == {"q1": ANSWER}
    # Without the second window's evidence the decoy wins.
    start_logits[1], end_logits[1] = 0.0, 0.0
    assert postprocess_predictions(prepared.eval_examples, features, start_logits, end_logits) == {"q1": "cat"}


@pytest.mark.parametrize(
    ("start", "end", "answer"),
    [
        (8, 9, "sat on"),  # a valid span
        (2, 3, ""),  # inside the question: not answerable
        (9, 7, ""),  # end before start
        (6, 11, ""),  # 6 tokens, longer than max_answer_length=5
        (6, 10, "the cat sat on the"),  # exactly 5 tokens
    ],
)
def test_postprocess_rejects_invalid_spans(prepared, start, end, answer):
    # n_best_size=1 pairs only the top start with the top end, so an invalid pair leaves no answer at all.
    features = prepared.eval_features
    start_logits, end_logits = np.zeros((2, 20)), np.zeros((2, 20))
    start_logits[0, start], end_logits[0, end] = 1.0, 1.0
    start_logits[1, 0], end_logits[1, 0] = 1.0, 1.0  # the second window's best is its CLS: never an answer
    predictions = postprocess_predictions(
        prepared.eval_examples, features, start_logits, end_logits, n_best_size=1, max_answer_length=5
    )
    assert predictions == {"q1": answer}


def test_postprocess_ignores_batch_padding_beyond_a_feature(prepared):
    features = prepared.eval_features
    width = max(len(ids) for ids in features["input_ids"]) + 5
    start_logits, end_logits = np.zeros((2, width)), np.zeros((2, width))
    start_logits[:, -1], end_logits[:, -1] = 99.0, 99.0  # a position no feature has
    start_logits[1, features[1]["start_positions"]] = 1.0
    end_logits[1, features[1]["end_positions"]] = 1.0
    assert postprocess_predictions(prepared.eval_examples, features, start_logits, end_logits) == {"q1": ANSWER}


def test_compute_metrics_post_processes_and_scores_against_all_gold_answers(prepared, bert_tokenizer):
    features = prepared.eval_features
    start_logits, end_logits = np.zeros((2, 20)), np.zeros((2, 20))
    start_logits[1, features[1]["start_positions"] + 2] = 1.0  # just "france"
    end_logits[1, features[1]["end_positions"]] = 1.0
    compute = TASKS["squad"].compute_metrics(prepared, bert_tokenizer, DATA)
    metrics = compute(EvalPrediction(predictions=(start_logits, end_logits), label_ids=None))
    assert metrics == {"exact_match": 0.0, "f1": pytest.approx(100 * 2 * (1 * 1 / 3) / (1 + 1 / 3))}


def test_the_final_evaluation_post_processes_its_logits_once(prepared, bert_tokenizer, monkeypatch):
    # compute_metrics and then prediction_files see the same logits at the end of a run.
    import adamoe.tasks.squad as squad

    calls = []
    monkeypatch.setattr(squad, "postprocess_predictions", lambda *a, **k: calls.append(1) or postprocess(*a, **k))
    task, features = TASKS["squad"], prepared.eval_features
    start_logits, end_logits = np.zeros((2, 20)), np.zeros((2, 20))
    start_logits[1, features[1]["start_positions"]] = end_logits[1, features[1]["end_positions"]] = 1.0
    logits = (start_logits, end_logits)
    metrics = task.compute_metrics(prepared, bert_tokenizer, DATA)(EvalPrediction(predictions=logits, label_ids=None))
    files = task.prediction_files(EvalPrediction(predictions=logits, label_ids=None), prepared, bert_tokenizer, DATA)
    assert metrics["exact_match"] == 100.0 and json.loads(files["eval_predictions.json"]) == {"q1": ANSWER}
    assert len(calls) == 1

    # Other logits (an equal copy too), or other span settings, are post-processed afresh.
    decoy = (np.zeros((2, 20)), np.zeros((2, 20)))
    decoy[0][0, 7] = decoy[1][0, 7] = 1.0
    files = task.prediction_files(EvalPrediction(predictions=decoy, label_ids=None), prepared, bert_tokenizer, DATA)
    assert json.loads(files["eval_predictions.json"]) == {"q1": "cat"} and len(calls) == 2
    copied = EvalPrediction(predictions=(start_logits.copy(), end_logits.copy()), label_ids=None)
    task.prediction_files(copied, prepared, bert_tokenizer, DATA)
    one_best = DataArgs(max_seq_length=20, doc_stride=4, n_best_size=1)
    task.prediction_files(copied, prepared, bert_tokenizer, one_best)
    assert len(calls) == 4


def test_doc_stride_must_fit_in_a_window(bert_tokenizer, squad_example):
    raw = DatasetDict({"validation": Dataset.from_list([squad_example])})
    with pytest.raises(ValueError, match="doc_stride"):
        TASKS["squad"].preprocess(raw, bert_tokenizer, DataArgs(max_seq_length=20, doc_stride=20))
