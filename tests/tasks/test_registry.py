"""The registry lists the paper's six tasks, each exposing the whole `Task` contract."""

from __future__ import annotations

import importlib
import typing

import pytest

from adamoe.tasks import TASKS, DataArgs, get_task
from adamoe.tasks.base import TaskKind

# Paper Table 2/3: task -> (model, main metric, kind).
PAPER = {
    "sst2": ("bert-base-uncased", "accuracy", "classification"),
    "squad": ("bert-base-uncased", "f1", "qa"),
    "wmt19": ("facebook/wmt19-de-en", "bleu", "seq2seq"),
    "cnn_dailymail": ("facebook/bart-large", "rouge1", "seq2seq"),
    "wikitext": ("gpt2-medium", "perplexity", "causal_lm"),
    "soda": ("microsoft/DialoGPT-medium", "perplexity", "causal_lm"),
}


def test_registry_holds_the_paper_tasks():
    assert list(TASKS) == list(PAPER)
    with pytest.raises(KeyError, match="available: sst2, squad"):
        get_task("mnli")


@pytest.mark.parametrize("name", list(PAPER))
def test_task_exposes_the_contract(name):
    task = get_task(name)
    assert task.name == name
    assert (task.default_model, task.main_metric, task.kind) == PAPER[name]
    assert task.kind in typing.get_args(TaskKind)
    assert task.main_metric in task.metric_names
    assert task.greater_is_better == (task.kind != "causal_lm")
    assert callable(task.model_class.from_pretrained)
    assert (task.preprocess_logits_for_metrics is not None) == (task.kind == "causal_lm")
    overrides = task.training_overrides(DataArgs())
    assert overrides["metric_for_best_model"] == task.main_metric
    assert overrides.get("predict_with_generate", False) == (task.kind == "seq2seq")
    # The task's module (one per task) has a docstring that names the paper row it reproduces.
    assert "paper Table 3" in importlib.import_module(f"adamoe.tasks.{name}").__doc__


def test_data_args_are_validated():
    with pytest.raises(ValueError, match="direction"):
        DataArgs(direction="de-fr")
    with pytest.raises(ValueError, match="max_train_samples must be a positive integer"):
        DataArgs(max_train_samples=0)
