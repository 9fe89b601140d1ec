"""Preprocessing, collators and compute_metrics of the classification, seq2seq and causal-LM tasks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import BartConfig, EvalPrediction, FSMTConfig, T5Config, T5ForConditionalGeneration

from adamoe.tasks import TASKS, DataArgs
from adamoe.tasks.soda import build_example
from adamoe.tasks.wikitext import group_texts

# A hand-built T5Config needs these three ids set (T5's own defaults are not in the bare config).
T5_IDS = {"decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}
T5_CONFIG = T5Config(**T5_IDS)
PAIRS = [
    {"translation": {"de": "die katze", "en": "the cat"}},
    {"translation": {"de": "paris ist die hauptstadt", "en": "paris is the capital"}},
]


def both_splits(rows: list[dict]) -> DatasetDict:
    return DatasetDict({"train": Dataset.from_list(rows), "validation": Dataset.from_list(rows)})


def test_sst2_tokenizes_truncates_and_pads_per_batch(bert_tokenizer):
    raw = both_splits([{"sentence": "the cat sat", "label": 1}, {"sentence": "on the mat " * 50, "label": 0}])
    task = TASKS["sst2"]
    prepared = task.preprocess(raw, bert_tokenizer, DataArgs(max_seq_length=16))
    assert prepared.eval["labels"] == [1, 0]
    assert bert_tokenizer.decode(prepared.train[0]["input_ids"]) == "[CLS] the cat sat [SEP]"
    assert len(prepared.train[1]["input_ids"]) == 16
    batch = task.data_collator(bert_tokenizer)([prepared.eval[0], prepared.eval[1]])
    assert batch["input_ids"].shape == (2, 16) and batch["attention_mask"][0].sum() == 5
    compute = task.compute_metrics(prepared, bert_tokenizer, DataArgs())
    logits = np.array([[0.1, 0.9], [0.2, 0.1]])  # predicts 1, 0
    assert compute(EvalPrediction(predictions=logits, label_ids=np.array([1, 1]))) == {"accuracy": 0.5}


@pytest.mark.parametrize(
    ("config", "direction", "source", "target"),
    [
        (None, "de-en", "die katze", "the cat"),
        (BartConfig(), "de-en", "die katze", "the cat"),  # only T5 takes a prefix
        (T5_CONFIG, "de-en", "translate german to english : die katze", "the cat"),
        (T5_CONFIG, "en-de", "translate english to german : the cat", "die katze"),
    ],
)
def test_wmt19_direction_and_t5_prefix(bert_tokenizer, config, direction, source, target):
    data = DataArgs(direction=direction)
    prepared = TASKS["wmt19"].preprocess(both_splits(PAIRS), bert_tokenizer, data, config)
    first = prepared.train[0]
    assert bert_tokenizer.decode(first["input_ids"], skip_special_tokens=True) == source
    assert bert_tokenizer.decode(first["labels"], skip_special_tokens=True) == target


def test_wmt19_fsmt_labels_use_the_target_vocabulary(fsmt_tokenizer):
    config = FSMTConfig(langs=["de", "en"], src_vocab_size=200, tgt_vocab_size=200)
    prepared = TASKS["wmt19"].preprocess(both_splits(PAIRS), fsmt_tokenizer, DataArgs(max_target_length=8), config)
    first = prepared.train[0]
    assert first["input_ids"] == fsmt_tokenizer("die katze")["input_ids"]  # source vocabulary
    # decode() reads target-vocabulary ids, as generation produces them: labels must round-trip through it.
    assert fsmt_tokenizer.decode(first["labels"], skip_special_tokens=True) == "the cat"
    # Truncated to 7 pieces + </s> (one piece per character here).
    assert fsmt_tokenizer.decode(prepared.train[1]["labels"], skip_special_tokens=True) == "paris is"
    assert len(prepared.train[1]["labels"]) == 8


def test_wmt19_refuses_an_fsmt_model_of_the_other_direction(bert_tokenizer):
    config = FSMTConfig(langs=["de", "en"], src_vocab_size=10, tgt_vocab_size=10)
    TASKS["wmt19"].preprocess(both_splits(PAIRS), bert_tokenizer, DataArgs(), config)
    with pytest.raises(ValueError, match="use facebook/wmt19-en-de"):
        TASKS["wmt19"].preprocess(both_splits(PAIRS), bert_tokenizer, DataArgs(direction="en-de"), config)


def test_cnn_dailymail_prefix_override_and_truncation(bert_tokenizer):
    raw = both_splits([{"id": "1", "article": "the cat sat on the mat " * 20, "highlights": "cat sat\ncat happy"}])
    data = DataArgs(max_source_length=12, max_target_length=4, source_prefix="tl;dr ")
    prepared = TASKS["cnn_dailymail"].preprocess(raw, bert_tokenizer, data, T5_CONFIG)
    first = prepared.eval[0]
    assert len(first["input_ids"]) == 12 and len(first["labels"]) == 4
    assert bert_tokenizer.decode(first["input_ids"], skip_special_tokens=True).startswith("tl ; dr the cat")
    prefix = TASKS["cnn_dailymail"].preprocess(raw, bert_tokenizer, DataArgs(max_source_length=20), T5_CONFIG)
    assert bert_tokenizer.decode(prefix.eval[0]["input_ids"], skip_special_tokens=True).startswith("summarize :")


def test_seq2seq_collator_pads_labels_with_ignore_index_and_builds_decoder_inputs(bert_tokenizer):
    task = TASKS["wmt19"]
    prepared = task.preprocess(both_splits(PAIRS), bert_tokenizer, DataArgs())
    model = T5ForConditionalGeneration(
        T5Config(
            vocab_size=len(bert_tokenizer),
            d_model=8,
            d_ff=16,
            d_kv=4,
            num_layers=1,
            num_heads=2,
            **T5_IDS,
        )
    )
    batch = task.data_collator(bert_tokenizer, model)([prepared.train[0], prepared.train[1]])
    short = len(prepared.train[0]["labels"])
    assert (batch["labels"][0, short:] == -100).all() and (batch["labels"][0, :short] >= 0).all()
    assert batch["decoder_input_ids"][0, 0] == 0  # decoder_start_token_id, then labels shifted right
    assert torch.equal(batch["decoder_input_ids"][1, 1:], batch["labels"][1, :-1])


def test_seq2seq_compute_metrics_decodes_generations_padded_with_ignore_index(bert_tokenizer):
    ids = [bert_tokenizer(text)["input_ids"] for text in ("the cat sat on the mat", "paris is the capital")]
    width = max(len(i) for i in ids) + 2
    padded = np.array([i + [-100] * (width - len(i)) for i in ids])  # how the Trainer pads across batches
    task = TASKS["wmt19"]
    metrics = task.compute_metrics(None, bert_tokenizer, DataArgs())(
        EvalPrediction(predictions=padded, label_ids=padded)
    )
    assert metrics["bleu"] == pytest.approx(100.0)
    assert metrics["gen_len"] == pytest.approx(np.mean([len(i) for i in ids]))
    rouge = TASKS["cnn_dailymail"].compute_metrics(None, bert_tokenizer, DataArgs())
    assert rouge(EvalPrediction(predictions=padded, label_ids=padded))["rouge1"] == pytest.approx(100.0)
    overrides = task.training_overrides(DataArgs(max_target_length=64, num_beams=4))
    assert overrides == {
        "predict_with_generate": True,
        "generation_max_length": 64,
        "generation_num_beams": 4,
        "metric_for_best_model": "bleu",
        "greater_is_better": True,
    }


def test_group_texts_concatenates_and_drops_the_tail():
    batch = {"input_ids": [[1, 2, 3], [], [4, 5, 6, 7, 8]], "attention_mask": [[1, 1, 1], [], [1, 1, 1, 1, 1]]}
    blocks = group_texts(batch, block_size=3)
    assert blocks["input_ids"] == [[1, 2, 3], [4, 5, 6]]
    assert blocks["labels"] == blocks["input_ids"] and blocks["attention_mask"] == [[1, 1, 1]] * 2


def test_wikitext_blocks(gpt2_tokenizer):
    lines = ["", " = Lobster = \n", "", " It is red . \n"]
    raw = both_splits([{"text": line} for line in lines])
    prepared = TASKS["wikitext"].preprocess(raw, gpt2_tokenizer, DataArgs(block_size=8))
    stream = gpt2_tokenizer("".join(lines))["input_ids"]  # byte-level: one token per byte
    assert prepared.train["input_ids"] == [stream[i : i + 8] for i in range(0, len(stream) // 8 * 8, 8)]
    with pytest.raises(ValueError, match="fewer than block_size=1024"):
        TASKS["wikitext"].preprocess(raw, gpt2_tokenizer, DataArgs())


def test_soda_example_labels_only_the_response_and_truncates_the_context_first():
    assert build_example([1, 2, 3], [4, 5], eos=9, max_length=20) == {
        "input_ids": [1, 2, 3, 9, 4, 5, 9],
        "attention_mask": [1] * 7,
        "labels": [-100, -100, -100, -100, 4, 5, 9],
    }
    assert build_example([1, 2, 3], [4, 5], eos=9, max_length=5)["input_ids"] == [3, 9, 4, 5, 9]
    assert build_example([1, 2, 3], [4, 5, 6, 7], eos=9, max_length=5)["labels"] == [-100, 4, 5, 6, 9]


def test_soda_turn_pairs_and_padding(gpt2_tokenizer):
    raw = both_splits([{"dialogue": ["Hi .", "Hello !", "Bye ."]}, {"dialogue": ["Yes ?", "No ."]}])
    task = TASKS["soda"]
    prepared = task.preprocess(raw, gpt2_tokenizer, DataArgs())
    eos = gpt2_tokenizer.eos_token
    decoded = [gpt2_tokenizer.decode(ids) for ids in prepared.eval["input_ids"]]
    assert decoded == [f"Hi .{eos}Hello !{eos}", f"Hello !{eos}Bye .{eos}", f"Yes ?{eos}No .{eos}"]
    scored = [gpt2_tokenizer.decode([t for t in labels if t != -100]) for labels in prepared.eval["labels"]]
    assert scored == [f"Hello !{eos}", f"Bye .{eos}", f"No .{eos}"]
    batch = task.data_collator(gpt2_tokenizer)([prepared.eval[0], prepared.eval[2]])
    assert gpt2_tokenizer.pad_token == eos
    assert batch["labels"][1, -1] == -100 and batch["attention_mask"][1, -1] == 0
    assert task.preprocess_logits_for_metrics is not None


def test_causal_lm_metrics_are_token_weighted(gpt2_tokenizer):
    compute = TASKS["soda"].compute_metrics(None, gpt2_tokenizer, DataArgs())
    rows = np.array([[2 * math.log(4), 2.0], [math.log(4), 1.0]])
    assert compute(EvalPrediction(predictions=rows, label_ids=None))["perplexity"] == pytest.approx(4.0)
