"""The task contract driven by a plain transformers `Trainer`/`Seq2SeqTrainer` on tiny random models.

These check what the task modules promise the trainer: the collators batch the prepared features, QA
metrics come out of `evaluate()` without a QA-specific trainer, causal-LM perplexity is token-weighted, and
the seq2seq overrides make the Seq2SeqTrainer generate and score text.
"""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import (
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    T5Config,
    T5ForConditionalGeneration,
    Trainer,
    TrainingArguments,
)

from adamoe.tasks import TASKS, DataArgs

pytestmark = pytest.mark.slow


def evaluate(task_name: str, model, tokenizer, rows: list[dict], data: DataArgs, tmp_path, config=None) -> dict:
    """Runs `task.load_raw`-shaped rows through preprocess and `Trainer.evaluate` exactly as a CLI would."""
    task = TASKS[task_name]
    raw = DatasetDict({"validation": Dataset.from_list(rows)})
    prepared = task.preprocess(raw, tokenizer, data, config or model.config)
    seq2seq = task.kind == "seq2seq"
    args_class, trainer_class = (Seq2SeqTrainingArguments, Seq2SeqTrainer) if seq2seq else (TrainingArguments, Trainer)
    args = args_class(
        output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to=[], use_cpu=True,
        **task.training_overrides(data),
    )  # fmt: skip
    trainer = trainer_class(
        model=model,
        args=args,
        eval_dataset=prepared.eval,
        data_collator=task.data_collator(tokenizer, model),
        compute_metrics=task.compute_metrics(prepared, tokenizer, data),
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics,
    )
    return trainer.evaluate()


def tiny_bert_config(tokenizer, **kwargs) -> BertConfig:
    torch.manual_seed(0)
    return BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        **kwargs,
    )  # fmt: skip


def test_sst2_accuracy(bert_tokenizer, tmp_path):
    model = BertForSequenceClassification(tiny_bert_config(bert_tokenizer, **TASKS["sst2"].model_kwargs))
    rows = [{"sentence": s, "label": i % 2} for i, s in enumerate(["the cat", "sat on the mat", "paris", "is"])]
    metrics = evaluate("sst2", model, bert_tokenizer, rows, DataArgs(), tmp_path)
    assert metrics["eval_accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0)


def test_squad_metrics_come_out_of_a_plain_trainer(bert_tokenizer, squad_example, tmp_path):
    second = {**squad_example, "id": "q2", "context": "paris is the capital of france .", "question": "what is paris?"}
    second["answers"] = {"text": ["capital of france"], "answer_start": [second["context"].index("capital")]}
    model = BertForQuestionAnswering(tiny_bert_config(bert_tokenizer))
    metrics = evaluate(
        "squad", model, bert_tokenizer, [squad_example, second], DataArgs(max_seq_length=20, doc_stride=4), tmp_path
    )
    assert {"eval_loss", "eval_f1", "eval_exact_match"} <= set(metrics)
    assert 0.0 <= metrics["eval_f1"] <= 100.0


def test_soda_perplexity_is_token_weighted(gpt2_tokenizer, tmp_path):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(gpt2_tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=64))
    rows = [{"dialogue": ["Hi .", "Hello there , friend !", "Ok ."]}, {"dialogue": ["Yes ?", "No ."]}]
    metrics = evaluate("soda", model, gpt2_tokenizer, rows, DataArgs(), tmp_path)

    # Reference: each pair alone, mean loss times its predicted tokens, summed, over all predicted tokens.
    raw = DatasetDict({"validation": Dataset.from_list(rows)})
    features = TASKS["soda"].preprocess(raw, gpt2_tokenizer, DataArgs()).eval
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for example in features:
            labels = torch.tensor([example["labels"]])
            loss = model(input_ids=torch.tensor([example["input_ids"]]), labels=labels).loss
            n = int((labels[:, 1:] != -100).sum())
            total, count = total + float(loss) * n, count + n
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)


def test_wmt19_generates_and_scores_bleu(bert_tokenizer, tmp_path):
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(bert_tokenizer), d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=bert_tokenizer.sep_token_id,
    )  # fmt: skip
    model = T5ForConditionalGeneration(config)
    rows = [{"translation": {"de": "die katze", "en": "the cat"}}, {"translation": {"de": "ja", "en": "yes"}}] * 2
    metrics = evaluate("wmt19", model, bert_tokenizer, rows, DataArgs(max_target_length=6), tmp_path)
    assert 0.0 <= metrics["eval_bleu"] <= 100.0
    assert 0 < metrics["eval_gen_len"] <= 6
