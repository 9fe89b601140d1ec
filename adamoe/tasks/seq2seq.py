"""The one sequence-to-sequence implementation, used by translation (wmt19) and summarization (cnn_dailymail), as
in HF `run_translation.py` and `run_summarization.py`: source prefixes per model type, source/target
tokenization, the padding collator, generation settings, and decoding generated ids for scoring.

A task differs only in its `PairFormat`: how a batch of rows becomes (source, target) texts, its prefix family,
default lengths and how it asks a decoder-only model (`prompting.PromptFormat`). `seq2seq_task` builds the whole
`Task` from it and the task's description. An encoder-decoder model (FSMT, BART, T5) gets the source as encoder
input and the target as labels; a decoder-only one (Llama, Qwen, GPT-2) gets `prompt + target` with labels on the
target only (`prompting.py`), and the trainer generates from the prompt to score it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import DataArgs, PreparedData, Task, logits_of, prepare_splits
from .causal_lm import ensure_pad_token
from .prompting import PromptFormat, prompt_examples, uses_prompts

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import DataCollatorForSeq2Seq, EvalPrediction, PretrainedConfig, PreTrainedTokenizerBase

# model_type -> task family -> source prefix. T5 was pretrained on a multi-task mixture that names the task
# in a text prefix; other models take none. Adding a model family = one row here.
SOURCE_PREFIXES: dict[str, dict[str, str]] = {
    "t5": {"translation": "translate {source} to {target}: ", "summarization": "summarize: "},
}
LANGUAGE_NAMES = {"de": "German", "en": "English"}


def fsmt_target_ids(tokenizer: Any, targets: list[str], max_length: int) -> list[list[int]]:
    """Target ids for FSMT, in the target language's Moses rules and the target vocabulary.

    `FSMTTokenizer` has no target mode: `tokenizer(text_target=...)` runs the source language's Moses rules and
    looks pieces up in the source vocabulary, while the decoder predicts (and `decode` reads) target-vocabulary
    ids. So targets are encoded the way the tokenizer decodes them, ending with `</s>` as FSMT inputs do.
    """
    vocab = {token: index for index, token in tokenizer.decoder.items()}  # target vocabulary
    unk, lang = vocab[tokenizer.unk_token], tokenizer.tgt_lang
    ids = []
    for text in targets:
        text = text.lower() if tokenizer.do_lower_case else text
        words = tokenizer.moses_tokenize(tokenizer.moses_pipeline(text, lang=lang), lang=lang)
        pieces = [piece for word in words if word for piece in tokenizer.bpe(word).split(" ")]
        ids.append([vocab.get(piece, unk) for piece in pieces][: max_length - 1] + [vocab[tokenizer.sep_token]])
    return ids


# Tokenizer class -> target encoder, for tokenizers whose `text_target` does not give decoder-vocabulary ids.
TARGET_ENCODERS: dict[str, Callable[[Any, list[str], int], list[list[int]]]] = {"FSMTTokenizer": fsmt_target_ids}


def source_prefix(data: DataArgs, model_config: PretrainedConfig | None, family: str, **fields: str) -> str:
    """`data.source_prefix` if set, else the model type's prefix for `family` from `SOURCE_PREFIXES`, else "".

    Example:
        ```python
        >>> source_prefix(DataArgs(), T5Config(), "translation", source="German", target="English")
        'translate German to English: '
        ```
    """
    if data.source_prefix is not None:
        return data.source_prefix
    model_type = getattr(model_config, "model_type", None)
    return SOURCE_PREFIXES.get(model_type, {}).get(family, "").format(**fields)


@dataclass(frozen=True)
class PairFormat:
    """How a sequence-to-sequence task reads its rows: everything in which translation and summarization differ.

    Args:
        family: The key of `SOURCE_PREFIXES` ("translation", "summarization").
        pairs: `(batch of raw rows, data) -> (sources, targets)`.
        max_source_length: Source tokens kept when `DataArgs.max_source_length` is unset.
        max_target_length: Target tokens kept (and generated) when `DataArgs.max_target_length` is unset.
        prompt: How a decoder-only model is asked; its texts are formatted with `prefix_fields`.
        prefix_fields: `data -> fields` that the family's prefix template and the prompt are formatted with.
        check_model: `(model_config, data) -> None`, raising `ValueError` for a model that cannot do the task.
    """

    family: str
    pairs: Callable[[dict[str, list], DataArgs], tuple[list[str], list[str]]]
    max_source_length: int
    max_target_length: int
    prompt: PromptFormat
    prefix_fields: Callable[[DataArgs], dict[str, str]] = lambda data: {}
    check_model: Callable[[PretrainedConfig | None, DataArgs], None] | None = None

    def lengths(self, data: DataArgs) -> tuple[int, int]:
        """(source, target) token limits: the data arguments', else the task's defaults."""
        return data.max_source_length or self.max_source_length, data.max_target_length or self.max_target_length

    def prefix(self, data: DataArgs, model_config: PretrainedConfig | None) -> str:
        """The text put before every source (`source_prefix`)."""
        return source_prefix(data, model_config, self.family, **self.prefix_fields(data))

    def prompt_examples(
        self, batch: dict[str, list], tokenizer: Any, data: DataArgs, model_config: PretrainedConfig | None
    ) -> dict[str, list[list[int]]]:
        """The decoder-only features of a batch of rows (`prompting.prompt_examples`)."""
        fields = self.prefix_fields(data)
        return prompt_examples(
            *self.pairs(batch, data),
            tokenizer,
            model_config,
            instruction=self.prompt.instruction.format(**fields),
            answer_prefix=self.prompt.answer_prefix.format(**fields),
            max_source_length=self.lengths(data)[0],
            max_target_length=self.lengths(data)[1],
        )

    def texts(self, rows: Dataset, data: DataArgs) -> tuple[list[str], list[str]]:
        """(sources, targets) of a whole split."""
        return self.pairs(rows.to_dict(), data)


def preprocess(
    form: PairFormat,
    raw: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    data: DataArgs,
    model_config: PretrainedConfig | None = None,
) -> PreparedData:
    """Tokenizes prefix + source as inputs and the target as `labels`, both truncated, for every split.

    No padding here: the collator pads `labels` with -100, so padding never counts in the loss. A decoder-only
    model gets the prompt formulation instead (`prompting.py`).
    """
    if uses_prompts(model_config):
        return prepare_splits(raw, lambda batch: form.prompt_examples(batch, tokenizer, data, model_config), data)
    if form.check_model is not None:
        form.check_model(model_config, data)
    prefix = form.prefix(data, model_config)
    max_source_length, max_target_length = form.lengths(data)
    encode_targets = TARGET_ENCODERS.get(type(tokenizer).__name__)

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        sources, targets = form.pairs(batch, data)
        features = tokenizer([prefix + s for s in sources], max_length=max_source_length, truncation=True)
        if encode_targets is None:
            labels = tokenizer(text_target=targets, max_length=max_target_length, truncation=True)["input_ids"]
        else:
            labels = encode_targets(tokenizer, targets, max_target_length)
        features["labels"] = labels
        return features

    return prepare_splits(raw, tokenize, data)


def seq2seq_collator(tokenizer: PreTrainedTokenizerBase, model: Any = None) -> DataCollatorForSeq2Seq:
    """Pads inputs with the pad token and labels with -100; with an encoder-decoder `model`, also builds
    `decoder_input_ids`. A decoder-only model's tokenizer may lack a pad token: EOS stands in (`ensure_pad_token`)."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(ensure_pad_token(tokenizer), model=model, label_pad_token_id=-100)


def generation_overrides(form: PairFormat, data: DataArgs) -> dict[str, Any]:
    """`Seq2SeqTrainingArguments` fields for scoring generated text rather than teacher-forced logits."""
    overrides: dict[str, Any] = {"predict_with_generate": True, "generation_max_length": form.lengths(data)[1]}
    if data.num_beams is not None:
        overrides["generation_num_beams"] = data.num_beams
    return overrides


def decode_predictions(eval_pred: EvalPrediction, tokenizer: PreTrainedTokenizerBase) -> tuple[list[str], list[str]]:
    """Decodes generated ids and labels to stripped strings (`predict_with_generate=True`).

    The Trainer pads generated ids and labels across batches with -100, which is not a token id: it is
    mapped back to the pad token before decoding, and special tokens are skipped.
    """
    predictions = logits_of(eval_pred)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def decode(ids: np.ndarray) -> list[str]:
        ids = np.where(np.asarray(ids) < 0, pad, ids)
        return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]

    return decode(predictions), decode(eval_pred.label_ids)


def generation_metrics(
    score: Callable[[list[str], list[str]], dict[str, float]], tokenizer: PreTrainedTokenizerBase
) -> Callable[[EvalPrediction], dict[str, float]]:
    """A `compute_metrics` that decodes generations and labels, scores them, and adds the mean `gen_len`."""
    pad = tokenizer.pad_token_id

    def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
        predictions, references = decode_predictions(eval_pred, tokenizer)
        metrics = score(predictions, references)
        ids = logits_of(eval_pred)
        metrics["gen_len"] = float(np.mean(np.sum((ids != pad) & (ids >= 0), axis=1)))
        return metrics

    return compute_metrics


def generated_prediction_files(
    predictions: EvalPrediction, prepared: PreparedData, tokenizer: PreTrainedTokenizerBase, *args: Any, **kwargs: Any
) -> dict[str, str]:
    """`generated_predictions.txt`: one generated text per validation example, in dataset order (line breaks
    inside a generation become spaces), as transformers' `run_translation.py` / `run_summarization.py` write it."""
    texts, _ = decode_predictions(predictions, tokenizer)
    return {"generated_predictions.txt": "".join(" ".join(text.split()) + "\n" for text in texts)}


def seq2seq_task(
    form: PairFormat,
    score: Callable[[list[str], list[str]], dict[str, float]],
    *,
    read_file: Callable[[Path], Dataset],
    **description: Any,
) -> Task:
    """A sequence-to-sequence `Task`: `form` says how rows become pairs, `score` how generations are scored
    (`(predictions, references) -> metrics`), `description` the `Task`'s descriptive fields."""
    return Task(
        kind="seq2seq",
        greater_is_better=True,
        # FSMT is in the seq2seq auto mapping (transformers >= 5), so one class covers FSMT, T5, BART, Marian.
        auto_model="AutoModelForSeq2SeqLM",
        decoder_auto_model="AutoModelForCausalLM",
        read_file=read_file,
        preprocess=partial(preprocess, form),
        compute_metrics=lambda prepared, tokenizer, data: generation_metrics(score, tokenizer),
        prediction_files=generated_prediction_files,
        data_collator=seq2seq_collator,
        extra_training_arguments=partial(generation_overrides, form),
        pair_format=form,
        **description,
    )
