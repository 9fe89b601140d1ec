"""The paper's metrics as pure functions that work offline (no `evaluate.load`, which needs the Hub).

Each follows the reference implementation the paper's numbers come from: the official SQuAD v1.1 evaluation
script, `sacrebleu.corpus_bleu` with its default 13a tokenizer, Google's `rouge_score` with the Porter
stemmer, and perplexity as the exponential of the mean negative log-likelihood per predicted token.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def accuracy(predictions: Sequence[int] | np.ndarray, references: Sequence[int] | np.ndarray) -> float:
    """Fraction of predictions equal to their reference label.

    Example:
        ```python
        >>> accuracy([1, 0, 1, 1], [1, 0, 0, 1])
        0.75
        ```
    """
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.shape != references.shape or predictions.size == 0:
        raise ValueError(f"Need equal, non-empty shapes; got {predictions.shape} and {references.shape}.")
    return float((predictions == references).mean())


def squad_normalize_answer(text: str) -> str:
    """Lowercases and removes punctuation, the articles a/an/the and extra whitespace (official SQuAD v1.1).

    Example:
        ```python
        >>> squad_normalize_answer("The  Eiffel Tower!")
        'eiffel tower'
        ```
    """
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_exact_match(prediction: str, ground_truth: str) -> float:
    """1.0 when the normalised answers are identical, else 0.0."""
    return float(squad_normalize_answer(prediction) == squad_normalize_answer(ground_truth))


def squad_f1(prediction: str, ground_truth: str) -> float:
    """Token-overlap F1 between the normalised answers (official SQuAD v1.1)."""
    prediction_tokens = squad_normalize_answer(prediction).split()
    truth_tokens = squad_normalize_answer(ground_truth).split()
    common = sum((Counter(prediction_tokens) & Counter(truth_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction_tokens), common / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: Sequence[dict], references: Sequence[dict]) -> dict[str, float]:
    """Exact match and F1 in percent, each the max over a question's gold answers, averaged over questions.

    Args:
        predictions: `{"id": ..., "prediction_text": ...}` per question (the format `evaluate`'s "squad" uses).
        references: `{"id": ..., "answers": {"text": [...], "answer_start": [...]}}` per question.

    Example:
        ```python
        >>> squad_metrics([{"id": "q", "prediction_text": "the cat"}],
        ...               [{"id": "q", "answers": {"text": ["Cat", "a dog"], "answer_start": [0, 9]}}])
        {'exact_match': 100.0, 'f1': 100.0}
        ```
    """
    predicted = {p["id"]: p["prediction_text"] for p in predictions}
    missing = [r["id"] for r in references if r["id"] not in predicted]
    if missing or not references:
        raise ValueError(f"Need a prediction for every reference; missing ids {missing[:5]} (of {len(missing)}).")
    exact, f1 = 0.0, 0.0
    for reference in references:
        golds, prediction = reference["answers"]["text"], predicted[reference["id"]]
        exact += max(squad_exact_match(prediction, gold) for gold in golds)
        f1 += max(squad_f1(prediction, gold) for gold in golds)
    return {"exact_match": 100.0 * exact / len(references), "f1": 100.0 * f1 / len(references)}


def sacrebleu_score(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (0-100) from `sacrebleu.corpus_bleu` with its defaults (13a tokenizer, exp smoothing).

    Args:
        predictions: One hypothesis per segment.
        references: One reference per segment, or a list of references per segment (all the same count).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    per_segment = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
    # sacrebleu wants reference *streams*: stream k holds the k-th reference of every segment.
    streams = [list(stream) for stream in zip(*per_segment, strict=True)]
    import sacrebleu

    return sacrebleu.corpus_bleu(list(predictions), streams).score


def _split_sentences(text: str) -> str:
    # rougeLsum scores summary-level LCS over newline-separated sentences. CNN/DM highlights already have
    # one sentence per line; generated text gets a rule-based split (nltk's punkt model needs a download).
    if "\n" in text:
        return text
    return "\n".join(s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s)


def rouge_scores(
    predictions: Sequence[str], references: Sequence[str], rouge_types: Sequence[str] = ROUGE_TYPES
) -> dict[str, float]:
    """Mean ROUGE F-measure in percent per type, Porter-stemmed, from Google's `rouge_score`.

    Example:
        ```python
        >>> rouge_scores(["the cat sat"], ["the cat sat"])["rouge1"]
        100.0
        ```
    """
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"Need equal, non-empty lists; got {len(predictions)} and {len(references)}.")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=True)
    totals = dict.fromkeys(rouge_types, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        if "rougeLsum" in rouge_types:
            prediction, reference = _split_sentences(prediction), _split_sentences(reference)
        scores = scorer.score(reference, prediction)  # rouge_score takes (target, prediction)
        for rouge_type in rouge_types:
            totals[rouge_type] += scores[rouge_type].fmeasure
    return {rouge_type: 100.0 * total / len(predictions) for rouge_type, total in totals.items()}


def perplexity(mean_nll: float) -> float:
    """exp(mean negative log-likelihood per token), capped at `inf` instead of overflowing."""
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf


def perplexity_from_losses(total_nll: float, n_tokens: int) -> float:
    """Perplexity from the summed token NLL and the number of predicted tokens.

    Average over tokens, not batches: the mean of per-batch mean losses over-weights batches with few
    predicted tokens (short SODA responses, a padded last batch) and is not the corpus perplexity.

    Example:
        ```python
        >>> perplexity_from_losses(math.log(2) + math.log(8), 2)  # token probabilities 1/2 and 1/8
        4.0
        ```
    """
    if n_tokens <= 0:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}.")
    return perplexity(total_nll / n_tokens)


def token_nll(logits: torch.Tensor | tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
    """Per-row summed next-token NLL and predicted-token count for a causal LM batch.

    Used as the Trainer's `preprocess_logits_for_metrics`, so evaluation keeps two numbers per row instead
    of the `(batch, seq, vocab)` logits, and perplexity is computed from the logits alone (no auxiliary
    losses can leak in). Labels are shifted as the model's own loss shifts them; `-100` is not predicted.

    Returns:
        `(batch, 2)` float tensor: `[:, 0]` summed NLL, `[:, 1]` number of predicted tokens.
    """
    if isinstance(logits, tuple):  # models that also return e.g. hidden states put the logits first
        logits = logits[0]
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]  # (batch, seq - 1, vocab), (batch, seq - 1)
    import torch
    import torch.nn.functional as F

    nll = F.cross_entropy(
        shift_logits.float().transpose(1, 2), shift_labels, ignore_index=-100, reduction="none"
    )  # (batch, seq - 1)
    counts = (shift_labels != -100).sum(dim=1)
    return torch.stack([nll.sum(dim=1), counts.float()], dim=1)
