"""The metric functions against independent references: published examples and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from adamoe.tasks.causal_lm import perplexity_metrics
from adamoe.tasks.metrics import (
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


def test_accuracy():
    assert accuracy([1, 0, 1, 1], [1, 0, 0, 1]) == 0.75
    with pytest.raises(ValueError):
        accuracy([1, 0], [1])


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        # The official v1.1 script: lower, drop punctuation, drop the articles a/an/the, collapse whitespace.
        ("The Eiffel Tower!", "eiffel tower"),
        ("  An apple, a day.", "apple day"),
        ("Theatre of the Absurd", "theatre of absurd"),  # "the" only as a whole word
        ("Denver Broncos'", "denver broncos"),
        ("1,000", "1000"),
    ],
)
def test_squad_normalize_answer(text, normalized):
    assert squad_normalize_answer(text) == normalized


def test_squad_exact_match_and_f1_by_hand():
    assert squad_exact_match("The Broncos", "broncos!") == 1.0
    assert squad_exact_match("Denver Broncos", "Broncos") == 0.0
    # "the cat sat" -> [cat, sat]; "a cat sat down" -> [cat, sat, down]: P = 1, R = 2/3, F1 = 0.8.
    assert squad_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert squad_f1("dog", "cat") == 0.0
    assert squad_f1("the", "cat") == 0.0  # normalises to no tokens


def test_squad_metrics_takes_the_best_gold_answer_and_averages_in_percent():
    references = [
        {"id": "a", "answers": {"text": ["Denver Broncos", "Broncos"], "answer_start": [0, 7]}},
        {"id": "b", "answers": {"text": ["a cat sat down"], "answer_start": [0]}},
    ]
    predictions = [{"id": "b", "prediction_text": "the cat sat"}, {"id": "a", "prediction_text": "broncos"}]
    metrics = squad_metrics(predictions, references)
    assert metrics["exact_match"] == pytest.approx(50.0)  # a: exact on the second gold answer; b: not exact
    assert metrics["f1"] == pytest.approx(100 * (1.0 + 0.8) / 2)
    with pytest.raises(ValueError, match="missing ids"):
        squad_metrics(predictions[:1], references)


def test_sacrebleu_matches_the_documented_example():
    # sacrebleu's README: "BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ratio = 0.944 hyp_len = 17 ref_len = 18)".
    hypotheses = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    references = [
        ["The dog bit the man.", "The dog had bit the man."],
        ["It was not unexpected.", "No one was surprised."],
        ["The man bit him first.", "The man had bitten the dog."],
    ]
    assert sacrebleu_score(hypotheses, references) == pytest.approx(48.53, abs=0.005)
    assert sacrebleu_score(["The dog bit the man ."], ["The dog bit the man ."]) == pytest.approx(100.0)


def test_rouge_matches_a_hand_computation():
    # Stemmed tokens: reference "the quick brown fox jump over the lazi dog" (9),
    # prediction "the quick brown dog jump on the log" (8). Unigram overlap 6 -> P 6/8, R 6/9;
    # LCS "the quick brown jump the" = 5 -> P 5/8, R 5/9.
    def f(p, r):
        return 100 * 2 * p * r / (p + r)

    scores = rouge_scores(
        ["The quick brown dog jumps on the log."],
        ["The quick brown fox jumps over the lazy dog"],
        rouge_types=("rouge1", "rougeL", "rougeLsum"),
    )
    assert scores["rouge1"] == pytest.approx(f(6 / 8, 6 / 9))
    assert scores["rougeL"] == pytest.approx(f(5 / 8, 5 / 9))
    assert scores["rougeLsum"] == pytest.approx(scores["rougeL"])  # one sentence: summary-level LCS = LCS


def test_rouge_is_a_mean_over_examples_and_lsum_splits_sentences():
    scores = rouge_scores(["the cat sat", "a dog"], ["the cat sat", "the bird"])
    assert scores["rouge1"] == pytest.approx(50.0)
    # Sentence order does not matter to summary-level LCS, but does to plain LCS.
    swapped = rouge_scores(["The dog ran. The cat sat."], ["The cat sat.\nThe dog ran."])
    assert swapped["rougeLsum"] == pytest.approx(100.0)
    assert swapped["rougeL"] < 100.0


def test_perplexity_by_hand():
    # Token probabilities 1/2 and 1/8: mean NLL = ln(16) / 2 = ln(4).
    assert perplexity_from_losses(math.log(2) + math.log(8), 2) == pytest.approx(4.0)
    assert perplexity(0.0) == 1.0
    assert perplexity(1e6) == math.inf
    with pytest.raises(ValueError):
        perplexity_from_losses(1.0, 0)


def test_token_nll_shifts_labels_and_skips_ignored_positions():
    vocab = 8
    logits = torch.zeros(2, 4, vocab)  # uniform: every predicted token costs ln(8)
    labels = torch.tensor([[5, 1, 2, 3], [-100, -100, 4, -100]])
    rows = token_nll(logits, labels)
    # Row 0 predicts tokens 1..3 (the first label is never predicted); row 1 predicts one token.
    torch.testing.assert_close(rows, torch.tensor([[3 * math.log(vocab), 3.0], [math.log(vocab), 1.0]]))
    # A confident correct prediction costs ~0.
    sharp = torch.full((1, 2, vocab), -30.0)
    sharp[0, 0, 6] = 30.0
    assert token_nll((sharp,), torch.tensor([[0, 6]]))[0, 0] < 1e-6


def test_perplexity_metrics_weight_by_tokens_not_rows():
    # Row 1: 1 token at p = 1/2; row 2: 3 tokens at p = 1/8. Per token: exp((ln2 + 3 ln8) / 4) = 2 ** 2.5.
    rows = np.array([[math.log(2), 1.0], [3 * math.log(8), 3.0]])
    metrics = perplexity_metrics(EvalPrediction(predictions=rows, label_ids=None))
    assert metrics["perplexity"] == pytest.approx(2**2.5)
    assert metrics["perplexity"] != pytest.approx(math.exp((math.log(2) + math.log(8)) / 2))  # mean of row means
