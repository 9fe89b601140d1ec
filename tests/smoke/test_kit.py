"""The smoke kit: files in each task's real local format that the task loaders accept, fast tokenizers that load
with `AutoTokenizer`, and tiny models that learn the data's rule within the kit's budget."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from adamoe.run.recipe import FinetuneConfig, finetune
from adamoe.smoke import BUDGETS, TASK_NAMES, write_smoke_kit
from adamoe.smoke.data import DE_ADJECTIVES, DE_NOUNS, DE_VERBS
from adamoe.tasks import DataArgs, get_task


def test_kit_covers_the_six_tasks_in_their_file_formats(smoke_kit):
    assert sorted(smoke_kit) == sorted(TASK_NAMES)
    suffixes = {task: kit.train_file.suffix for task, kit in smoke_kit.items()}
    assert suffixes == {
        "sst2": ".tsv",
        "squad": ".json",
        "wmt19": ".jsonl",
        "cnn_dailymail": ".jsonl",
        "wikitext": ".tokens",
        "soda": ".jsonl",
    }
    assert smoke_kit["sst2"].train_file.read_text().splitlines()[0] == "sentence\tlabel"
    squad = json.loads(smoke_kit["squad"].train_file.read_text())
    assert set(squad) == {"version", "data"} and "paragraphs" in squad["data"][0]


@pytest.mark.parametrize("task", TASK_NAMES)
def test_the_task_loader_reads_the_kit_files(smoke_kit, task):
    kit = smoke_kit[task]
    raw = get_task(task).load_raw(DataArgs(train_file=str(kit.train_file), validation_file=str(kit.validation_file)))
    assert set(raw) == {"train", "validation"}
    if task != "wikitext":  # wikitext rows are lines, not examples
        assert (len(raw["train"]), len(raw["validation"])) == (BUDGETS[task].train_rows, BUDGETS[task].validation_rows)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_tokenizers_load_fast_with_offsets_and_word_ids(smoke_kit, task):
    tokenizer = AutoTokenizer.from_pretrained(smoke_kit[task].model_dir)
    assert tokenizer.is_fast
    encoding = tokenizer("the cat sat on the mat .", return_offsets_mapping=True)
    assert len(encoding["offset_mapping"]) == len(encoding["input_ids"])
    assert any(w is not None for w in encoding.word_ids())
    if task in ("sst2", "squad"):
        assert tokenizer.convert_ids_to_tokens(encoding["input_ids"])[0] == "[CLS]"
        assert {tokenizer.pad_token, tokenizer.mask_token, tokenizer.unk_token} == {"[PAD]", "[MASK]", "[UNK]"}
    if task in ("wmt19", "cnn_dailymail", "soda", "wikitext"):
        assert tokenizer.eos_token_id is not None


def test_squad_answers_point_at_their_text_and_translations_follow_the_dictionary(smoke_kit):
    squad = json.loads(smoke_kit["squad"].validation_file.read_text())
    for article in squad["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                (answer,) = qa["answers"]
                start = answer["answer_start"]
                assert paragraph["context"][start : start + len(answer["text"])] == answer["text"]
    dictionary = {**DE_NOUNS, **DE_ADJECTIVES, **DE_VERBS, "der": "the", "den": "the", "ist": "is", ".": "."}
    for line in smoke_kit["wmt19"].train_file.read_text().splitlines():
        pair = json.loads(line)["translation"]
        assert " ".join(dictionary[word] for word in pair["de"].split()) == pair["en"]


def test_a_written_kit_is_reused(tmp_path):
    first = write_smoke_kit(tmp_path, tasks=["sst2"])
    stamp = first["sst2"].train_file.stat().st_mtime_ns
    again = write_smoke_kit(tmp_path, tasks=["sst2"])
    assert again["sst2"].train_file.stat().st_mtime_ns == stamp
    assert again["sst2"] == first["sst2"]


@pytest.mark.slow
@pytest.mark.parametrize("task", TASK_NAMES)
def test_a_top2_moe_learns_each_task_within_the_budget(smoke_kit, task, tmp_path, single_thread):
    """The kit's promise: a clear metric in a few dozen steps (perplexity: below the ceiling)."""
    kit = smoke_kit[task]
    config = kit.run_config(output_dir=str(tmp_path / task))
    config["moe"]["gating"] = "top2"
    results = finetune(FinetuneConfig.from_dict(config))
    value = results["metrics"][get_task(task).main_metric]
    if get_task(task).greater_is_better:
        assert value >= kit.metric_floor
    else:
        assert value <= kit.metric_floor
    assert results["moe"]["num_experts"] == 16 and results["moe"]["expert_init"] == "random"
    assert results["global_steps"] == kit.budget.max_steps
