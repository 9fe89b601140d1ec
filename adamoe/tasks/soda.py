"""Dialogue response modelling: SODA, microsoft/DialoGPT-medium, perplexity (paper Table 3, "DialoGPT / SODA / PPL").

Every pair of consecutive turns of a dialogue becomes one example in DialoGPT's format, `context<eos>response<eos>`,
where only the response and its closing EOS carry labels (the context gets -100); with a tokenizer that has a chat
template (an instruction-tuned LLM such as SmolLM2) the context is the user turn and the response the assistant's,
labelled alike (`prompting.py`). Perplexity is exp(total NLL / response tokens) over the validation pairs (see
`causal_lm`). When a pair exceeds `max_seq_length` (default 256) the context loses its oldest tokens first, so the
scored response stays whole whenever it fits.

Local files: JSON lines `{"dialogue": [turn, turn, ...]}` (the Hub schema; other columns are ignored), or the
same as JSON/Parquet.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import DataArgs, PreparedData, Task, prepare_splits
from .causal_lm import generate_continuations, padding_lm_collator, perplexity_metrics
from .io import DataFormatError, Schema, TaskInputError, read_rows
from .metrics import token_nll
from .prompting import prompt_examples, prompt_of

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import EvalPrediction, PretrainedConfig, PreTrainedTokenizerBase

SCHEMA = Schema(
    columns=("dialogue",),
    example={"dialogue": ["Did you finish the report?", "Almost, I'll send it tonight.", "Great, thanks!"]},
)
FORMATS = (".jsonl", ".json", ".parquet")
MAX_SEQ_LENGTH = 256  # a SODA turn pair is ~40 tokens; 256 leaves room for long turns
MAX_RESPONSE_TOKENS = 32  # a SODA turn is ~20 tokens; generated predictions stop there or at EOS


def read_dialogue_file(path: Path) -> Dataset:
    rows = read_rows(path, SCHEMA, FORMATS)
    first = rows[0]["dialogue"]
    if not isinstance(first, list) or not all(isinstance(turn, str) for turn in first):
        raise DataFormatError(f"{path}: 'dialogue' must be a list of turn strings; first row has {first!r}.")
    return rows


def turn_pairs(batch: dict[str, list]) -> tuple[list[str], list[str]]:
    """(context, response) for every pair of consecutive turns in a batch of dialogues."""
    contexts, responses = [], []
    for turns in batch["dialogue"]:
        contexts.extend(turns[:-1])
        responses.extend(turns[1:])
    return contexts, responses


def build_example(context: list[int], response: list[int], eos: int, max_length: int) -> dict[str, list[int]]:
    """`context<eos>response<eos>` ids with labels on the response and its EOS only, at most `max_length` long."""
    response = response[: max_length - 2]  # room for the two EOS tokens
    budget = max_length - len(response) - 2
    context = context[len(context) - budget :] if budget > 0 else []  # keep the turns nearest the response
    input_ids = [*context, eos, *response, eos]
    labels = [-100] * (len(context) + 1) + [*response, eos]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def greedy_responses(
    model: Any, tokenizer: PreTrainedTokenizerBase, features: Dataset, max_new_tokens: int, batch_size: int = 16
) -> list[str]:
    """The greedy continuation of each feature's context (its tokens up to the first label), up to EOS."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    prompts = [prompt_of(ids, labels) for ids, labels in zip(features["input_ids"], features["labels"], strict=True)]
    was_training, texts = model.training, []
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            out = generate_continuations(model, batch, pad=pad, eos=eos, max_new_tokens=max_new_tokens)
            for row in out.tolist():
                response = row[: row.index(eos)] if eos in row else row
                texts.append(tokenizer.decode(response, skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return texts


def tokenize_dialogues(
    batch: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    model_config: PretrainedConfig | None = None,
) -> dict[str, list[list[int]]]:
    """DialoGPT's `context<eos>response<eos>`, or with a chat template (an instruction-tuned LLM) the context as the
    user turn and the response as the assistant's (`prompting.py`); labels on the response and its EOS only, the
    context losing its oldest tokens first."""
    contexts, responses = turn_pairs(batch)
    if getattr(tokenizer, "chat_template", None):
        return prompt_examples(
            contexts, responses, tokenizer, model_config, instruction="", answer_prefix="",
            max_source_length=max_length, max_target_length=max_length, max_length=max_length, keep_source_end=True,
        )  # fmt: skip
    context_ids = tokenizer(contexts, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    examples = [
        build_example(c, r, tokenizer.eos_token_id, max_length) for c, r in zip(context_ids, response_ids, strict=True)
    ]
    return {key: [example[key] for example in examples] for key in ("input_ids", "attention_mask", "labels")}


def preprocess(
    raw: DatasetDict, tokenizer: PreTrainedTokenizerBase, data: DataArgs, model_config: PretrainedConfig | None = None
) -> PreparedData:
    if tokenizer.eos_token_id is None:
        raise TaskInputError("soda needs a tokenizer with an EOS token: it separates context and response.")
    max_length = data.max_seq_length or MAX_SEQ_LENGTH
    if max_length < 3:
        raise TaskInputError(f"max_seq_length must be at least 3 (EOS, a token, EOS), got {max_length}.")
    tokenize = partial(tokenize_dialogues, tokenizer=tokenizer, max_length=max_length, model_config=model_config)
    return prepare_splits(raw, tokenize, data)


def prediction_files(
    predictions: EvalPrediction,
    prepared: PreparedData,
    tokenizer: PreTrainedTokenizerBase,
    data: DataArgs,
    model: Any = None,
) -> dict[str, str]:
    """`generated_predictions.txt`: the model's greedy response to each validation context, one line per
    (context, response) pair in dataset order, as `run_summarization.py` writes its generations."""
    if model is None or prepared.eval is None:
        return {}
    return {"generated_predictions.txt": "".join(" ".join(t.split()) + "\n" for t in greedy_responses(
        model, tokenizer, prepared.eval, max_new_tokens=data.max_target_length or MAX_RESPONSE_TOKENS
    ))}  # fmt: skip


SODA = Task(
    name="soda",
    description="Open-domain dialogue response modelling on social dialogues (SODA).",
    kind="causal_lm",
    hub_dataset=("allenai/soda", None),
    hub_task_type="text-generation",
    default_model="microsoft/DialoGPT-medium",
    default_dataset="SODA dialogues (allenai/soda)",
    metric_names=("perplexity", "nll"),
    main_metric="perplexity",
    greater_is_better=False,
    auto_model="AutoModelForCausalLM",
    read_file=read_dialogue_file,
    offline_example=("train.jsonl", "valid.jsonl"),
    preprocess=preprocess,
    compute_metrics=lambda prepared, tokenizer, data: perplexity_metrics,
    prediction_files=prediction_files,
    data_collator=padding_lm_collator,
    preprocess_logits_for_metrics=token_nll,
)
