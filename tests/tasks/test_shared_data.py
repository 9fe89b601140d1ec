"""Each task on the real-format samples in ../shared/data (skipped when that folder is absent).

Every test loads the real file through `load_raw`, preprocesses it with a real (or tiny) tokenizer, and
checks a metric floor where the answer is known: oracle logits for SQuAD, labels scored as their own
predictions for the seq2seq tasks, uniform logits (perplexity = vocabulary size) for the language models.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import EvalPrediction, T5Config

from adamoe.tasks import TASKS, DataArgs

pytestmark = pytest.mark.shared_data
T5_CONFIG = T5Config(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def test_sst2_sample(bert_tokenizer, shared_path):
    data = DataArgs(
        train_file=str(shared_path("sst2", "train.tsv")), validation_file=str(shared_path("sst2", "validation.tsv"))
    )
    raw = TASKS["sst2"].load_raw(data)
    assert (len(raw["train"]), len(raw["validation"])) == (3000, 500)
    assert set(raw["train"]["label"]) == {0, 1}
    prepared = TASKS["sst2"].preprocess(raw, bert_tokenizer, data)
    assert len(prepared.eval) == 500 and max(len(ids) for ids in prepared.train["input_ids"]) <= 128


def test_squad_sample_oracle_logits_recover_the_answers(bert_tokenizer, shared_path):
    path = str(shared_path("squad", "squad_v1.1_sample.json"))
    data = DataArgs(validation_file=path, max_eval_samples=120)
    raw = TASKS["squad"].load_raw(DataArgs(validation_file=path))
    assert len(raw["validation"]) == 1286  # the official nested JSON, flattened
    raw = TASKS["squad"].load_raw(data)
    prepared = TASKS["squad"].preprocess(raw, bert_tokenizer, data)
    features = prepared.eval_features
    assert len(features) > len(raw["validation"])  # long contexts are split into several windows
    assert max(len(ids) for ids in features["input_ids"]) <= 384

    # Logits that point at each window's labelled span (none for windows without the answer).
    width = max(len(ids) for ids in features["input_ids"])
    start_logits, end_logits = np.zeros((len(features), width)), np.zeros((len(features), width))
    for i, (start, end) in enumerate(zip(features["start_positions"], features["end_positions"], strict=True)):
        if start > 0:
            start_logits[i, start], end_logits[i, end] = 10.0, 10.0
    compute = TASKS["squad"].compute_metrics(prepared, bert_tokenizer, data)
    metrics = compute(EvalPrediction(predictions=(start_logits, end_logits), label_ids=None))
    assert metrics["exact_match"] >= 98.0 and metrics["f1"] >= 98.0  # 99.2 and 99.4 with this tokenizer


@pytest.mark.parametrize(
    "file", ["wmt19_de_en_newstest_sample.jsonl", "multi30k_de_en_validation.jsonl"], ids=["newstest", "multi30k"]
)
def test_translation_samples(real_t5_tokenizer, file, shared_path):
    data = DataArgs(validation_file=str(shared_path("translation", file)), max_eval_samples=200)
    raw = TASKS["wmt19"].load_raw(data)
    prepared = TASKS["wmt19"].preprocess(raw, real_t5_tokenizer, data, T5_CONFIG)
    source = real_t5_tokenizer.decode(prepared.eval[0]["input_ids"], skip_special_tokens=True)
    assert source.startswith("translate German to English: ")
    # The references scored against themselves, through the decode path of compute_metrics.
    labels = np.array([ids + [-100] * (256 - len(ids)) for ids in prepared.eval["labels"]])
    compute = TASKS["wmt19"].compute_metrics(prepared, real_t5_tokenizer, data)
    assert compute(EvalPrediction(predictions=labels, label_ids=labels))["bleu"] == pytest.approx(100.0)
    references = [pair["en"] for pair in raw["validation"]["translation"]]
    decoded = real_t5_tokenizer.batch_decode(list(prepared.eval["labels"]), skip_special_tokens=True)
    assert np.mean([d == r.strip() for d, r in zip(decoded, references, strict=True)]) >= 0.9


def test_cnn_dailymail_sample(real_t5_tokenizer, shared_path):
    data = DataArgs(validation_file=str(shared_path("summarization", "cnn_dailymail_sample60.jsonl")))
    raw = TASKS["cnn_dailymail"].load_raw(data)
    assert len(raw["validation"]) == 60
    prepared = TASKS["cnn_dailymail"].preprocess(raw, real_t5_tokenizer, data, T5_CONFIG)
    assert max(len(ids) for ids in prepared.eval["input_ids"]) == 1024  # news articles fill the source
    assert max(len(ids) for ids in prepared.eval["labels"]) <= 128
    assert real_t5_tokenizer.decode(prepared.eval[0]["input_ids"]).startswith("summarize: ")
    labels = np.array([ids + [0] * (128 - len(ids)) for ids in prepared.eval["labels"]])
    metrics = TASKS["cnn_dailymail"].compute_metrics(prepared, real_t5_tokenizer, data)(
        EvalPrediction(predictions=labels, label_ids=labels)
    )
    assert metrics["rouge1"] == pytest.approx(100.0) and metrics["rougeLsum"] == pytest.approx(100.0)


def uniform_perplexity(task_name: str, features, tokenizer) -> float:
    """Perplexity through the task's collator, logits reducer and compute_metrics, with uniform logits."""
    task = TASKS[task_name]
    # Two rows cut to 128 tokens: (rows, 128, 50257) float32 logits are already 50 MB.
    batch = task.data_collator(tokenizer)([{key: ids[:128] for key, ids in features[i].items()} for i in range(2)])
    logits = torch.zeros(*batch["input_ids"].shape, len(tokenizer))  # every token has probability 1 / vocab
    nll_rows = task.preprocess_logits_for_metrics(logits, batch["labels"])  # (2, 2): summed NLL, token count
    compute = task.compute_metrics(None, tokenizer, DataArgs())
    return compute(EvalPrediction(predictions=nll_rows.numpy(), label_ids=None))["perplexity"]


def test_wikitext_sample(real_gpt2_tokenizer, shared_path):
    data = DataArgs(validation_file=str(shared_path("wikitext", "wikitext2_valid.txt")))
    raw = TASKS["wikitext"].load_raw(data)
    assert len(raw["validation"]) == 3760 and raw["validation"]["text"][:2] == ["", " = Homarus gammarus = \n"]
    prepared = TASKS["wikitext"].preprocess(raw, real_gpt2_tokenizer, data)
    assert {len(ids) for ids in prepared.eval["input_ids"]} == {1024}
    assert prepared.eval["labels"] == prepared.eval["input_ids"]
    # The first block is the first 1024 tokens of the article stream.
    first_lines = "".join(raw["validation"]["text"][:40])
    assert prepared.eval[0]["input_ids"] == real_gpt2_tokenizer(first_lines)["input_ids"][:1024]
    assert uniform_perplexity("wikitext", prepared.eval, real_gpt2_tokenizer) == pytest.approx(50257, rel=1e-3)


def test_soda_format_on_the_dailydialog_sample(real_gpt2_tokenizer, shared_path):
    data = DataArgs(validation_file=str(shared_path("dialogue", "dailydialog_sample1500.jsonl")))
    raw = TASKS["soda"].load_raw(data)
    dialogues = raw["validation"]["dialogue"]
    prepared = TASKS["soda"].preprocess(raw, real_gpt2_tokenizer, data)
    assert len(prepared.eval) == sum(len(turns) - 1 for turns in dialogues)
    assert max(len(ids) for ids in prepared.eval["input_ids"]) <= 256
    eos = real_gpt2_tokenizer.eos_token
    first = prepared.eval[0]
    assert real_gpt2_tokenizer.decode(first["input_ids"]) == f"{dialogues[0][0]}{eos}{dialogues[0][1]}{eos}"
    scored = real_gpt2_tokenizer.decode([t for t in first["labels"] if t != -100])
    assert scored == f"{dialogues[0][1]}{eos}"
    assert uniform_perplexity("soda", prepared.eval, real_gpt2_tokenizer) == pytest.approx(50257, rel=1e-3)
