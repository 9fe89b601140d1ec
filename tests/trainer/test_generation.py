"""Evaluation by generation for a decoder-only model in the sequence-to-sequence trainer (trainer/generation.py).

A tiny upcycled Llama in float64 (so batched and single-example greedy decoding agree to the last token) is
evaluated on translation pairs: every prediction must be what `generate()` continues each prompt with on its own,
unpadded, and every label the reference target; the reported BLEU must be sacreBLEU's on those texts.
"""

import pytest
import sacrebleu
import torch
from datasets import Dataset, DatasetDict
from transformers import LlamaConfig, LlamaForCausalLM

import adamoe
from adamoe.tasks import DataArgs, get_task
from adamoe.tasks.prompting import prompt_of
from adamoe.tasks.seq2seq import decode_predictions
from adamoe.trainer import AdaMoESeq2SeqTrainer, AdaMoESeq2SeqTrainingArguments

PAIRS = [
    ("Guten Morgen.", "Good morning."),
    ("Das Haus ist rot.", "The house is red."),
    ("Ja.", "Yes."),
    ("Nein", "No"),
]
NEW_TOKENS = 6


# The paper configs of translation and summarisation smooth the labels (0.1), and the Trainer then pops them out of
# the batch it computes the loss of: the predictions must still find them.
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_predictions_continue_each_prompt_as_generate_does_alone(gpt2_tokenizer, train_kwargs, label_smoothing):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(gpt2_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=gpt2_tokenizer.eos_token_id, pad_token_id=gpt2_tokenizer.eos_token_id,
    )  # fmt: skip
    model = adamoe.moeify(LlamaForCausalLM(config), adamoe.MoEConfig(num_experts=4, threshold=0.1)).double()
    task, data = get_task("wmt19"), DataArgs()
    rows = Dataset.from_dict({"translation": [{"de": de, "en": en} for de, en in PAIRS]})
    prepared = task.preprocess(DatasetDict({"validation": rows}), gpt2_tokenizer, data, model.config)
    args = AdaMoESeq2SeqTrainingArguments(
        **{**train_kwargs, "per_device_eval_batch_size": 3},  # a batch of 3 and one of 1: padding both ways
        predict_with_generate=True,
        generation_max_length=NEW_TOKENS,
        label_smoothing_factor=label_smoothing,
    )
    trainer = AdaMoESeq2SeqTrainer(
        model=model,
        args=args,
        eval_dataset=prepared.eval,
        data_collator=task.data_collator(gpt2_tokenizer, model),
        processing_class=gpt2_tokenizer,
        compute_metrics=task.compute_metrics(prepared, gpt2_tokenizer, data),
    )
    output = trainer.predict(prepared.eval, metric_key_prefix="eval")

    eos = gpt2_tokenizer.eos_token_id
    expected = []
    for feature in prepared.eval:
        prompt = torch.tensor([prompt_of(feature["input_ids"], feature["labels"])])
        with torch.no_grad():
            alone = model.generate(
                prompt, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=eos, eos_token_id=eos
            )
        expected.append(gpt2_tokenizer.decode(alone[0, prompt.shape[1] :], skip_special_tokens=True).strip())
    predictions, references = decode_predictions(output, gpt2_tokenizer)
    assert predictions == expected
    assert references == [en for _, en in PAIRS]
    assert output.metrics["eval_bleu"] == sacrebleu.corpus_bleu(expected, [references]).score
    assert output.metrics["eval_loss"] > 0  # the teacher-forced loss on the targets, as in training
