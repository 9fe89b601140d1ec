"""`adamoe analyze`: the views feed the model exactly what the task's preprocessing does, and the word report's
counts add up to `adamoe.routing_stats` over the same forwards."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

import adamoe
from adamoe.analysis import analyze, build_view, collate, collect_routing, word_stats
from adamoe.smoke import TASK_NAMES
from adamoe.tasks import DataArgs, get_task


def smoke_data(kit, task: str) -> DataArgs:
    return DataArgs(validation_file=str(kit.validation_file), **kit.budget.data)


def moe_model(kit, task: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    task_def = get_task(task)
    model = task_def.model_class.from_pretrained(kit.model_dir, **task_def.model_kwargs)
    # A larger router init than the default makes the gate probabilities uneven, so both one- and two-expert
    # tokens occur in an untrained model.
    config = adamoe.MoEConfig(num_experts=8, threshold=0.3, expert_init="random", router_init_std=2.0)
    return adamoe.moeify(model, config).eval()


@pytest.mark.parametrize("task", TASK_NAMES)
def test_views_tokenize_exactly_as_the_task_does(smoke_kit, task):
    kit = smoke_kit[task]
    tokenizer = AutoTokenizer.from_pretrained(kit.model_dir)
    model_config = AutoConfig.from_pretrained(kit.model_dir)
    data = smoke_data(kit, task)
    task_def = get_task(task)
    raw = task_def.load_raw(data)
    prepared = task_def.preprocess(raw, tokenizer, data, model_config)
    examples = build_view(task, raw["validation"], tokenizer, data, model_config)
    assert [e.features["input_ids"] for e in examples] == prepared.eval["input_ids"]
    if task_def.kind in ("seq2seq", "causal_lm"):
        assert [e.features["labels"] for e in examples] == prepared.eval["labels"]
    for example in examples:  # every position of every stack belongs to a word occurrence
        for stack, positions in example.words.positions.items():
            decoder_side = stack == "decoder" and model_config.is_encoder_decoder
            assert len(positions) == len(example.features["labels" if decoder_side else "input_ids"])
            assert all(0 <= p < len(example.words.texts) for p in positions)


@pytest.mark.parametrize("task", ["sst2", "wmt19", "soda"])  # encoder, encoder-decoder, decoder with labels
def test_word_counts_equal_routing_stats_over_the_same_forwards(smoke_kit, task):
    kit = smoke_kit[task]
    tokenizer = AutoTokenizer.from_pretrained(kit.model_dir)
    model = moe_model(kit, task)
    data = smoke_data(kit, task)
    examples = build_view(task, get_task(task).load_raw(data)["validation"], tokenizer, data, model.config)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collection = collect_routing(model, examples, batch_size=8, pad_token_id=pad)

    # Independently: the same batches through the model, read with adamoe.routing_stats after each forward.
    tokens, two = {}, {}
    with torch.no_grad():
        for start in range(0, len(examples), 8):
            model(**collate(examples[start : start + 8], pad))
            for layer in adamoe.routing_stats(model).layers:
                tokens[layer.name] = tokens.get(layer.name, 0) + layer.num_tokens
                two[layer.name] = two.get(layer.name, 0) + sum(layer.second_choice_counts)
    assert {layer.name: layer.tokens for layer in collection.layers} == tokens
    assert {layer.name: layer.two_expert for layer in collection.layers} == two
    words = word_stats(collection)
    assert sum(w.decisions for w in words) == sum(tokens.values())
    assert sum(w.two_expert for w in words) == sum(two.values())
    assert 0 < sum(two.values()) < sum(tokens.values())  # both kinds of tokens occur, so the check has teeth


def test_sub_word_pieces_count_as_one_word(smoke_kit, tmp_path):
    kit = smoke_kit["sst2"]
    tokenizer = AutoTokenizer.from_pretrained(kit.model_dir)
    assert len(tokenizer.tokenize("unfulfilling")) > 1  # not in the kit's vocabulary: several pieces
    validation = tmp_path / "dev.tsv"
    validation.write_text("sentence\tlabel\nthe movie was unfulfilling .\t0\nunfulfilling , really .\t0\n")
    model = moe_model(kit, "sst2")
    data = DataArgs(validation_file=str(validation))
    examples = build_view("sst2", get_task("sst2").load_raw(data)["validation"], tokenizer, data, model.config)
    collection = collect_routing(model, examples, pad_token_id=tokenizer.pad_token_id)
    stats = {(w.word, w.special): w for w in word_stats(collection)}
    pieces, layers = len(tokenizer.tokenize("unfulfilling")), len(collection.layers)
    word = stats[("unfulfilling", False)]
    assert (word.occurrences, word.decisions) == (2, 2 * pieces * layers)
    assert stats[("[CLS]", True)].decisions == 2 * layers  # special tokens are counted, apart


def test_analyze_writes_the_report_and_its_totals_match(smoke_kit, tmp_path):
    kit = smoke_kit["wmt19"]
    model = moe_model(kit, "wmt19")
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    AutoTokenizer.from_pretrained(kit.model_dir).save_pretrained(checkpoint)
    report = analyze(checkpoint, "wmt19", smoke_data(kit, "wmt19"), tmp_path / "analysis")
    assert {p.name for p in report.outputs.values()} == {
        "analysis.md", "analysis.json", "gate_confidence.png", "two_expert_per_layer.png", "top_words.png"
    }  # fmt: skip
    assert {layer["stack"] for layer in report.layers} == {"encoder", "decoder"}
    saved = json.loads(report.outputs["json"].read_text())
    assert saved["word_totals"] == {
        "decisions": saved["num_tokens"],
        "two_expert": sum(layer["two_expert"] for layer in saved["layers"]),
    }
    assert saved["git_commit"] is not None and "torch" in saved["versions"]
    markdown = report.outputs["markdown"].read_text()
    assert "paper Table 4" in markdown and "paper Figure 2" in markdown
    assert any(w.examples and "**" in w.examples[0] for w in report.words)
