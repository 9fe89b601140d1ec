"""What the model sees for each validation example, with every input position mapped back to a word.

Each task's view tokenizes the raw validation rows exactly as the task's `preprocess` does (same text, same
prefix, same lengths and truncation; a test checks the input ids are identical), but keeps the fast tokenizer's
encodings, so `word_ids()` and `word_to_chars()` give the word each position belongs to. Sub-word pieces of one
word share a word occurrence; a special token (`[CLS]`, `</s>`, the decoder start) is an occurrence of its own,
so that every routed position counts somewhere and the word totals equal `routing_stats`'s.

Decoder positions of an encoder-decoder model hold the labels shifted right: position 0 is the decoder start
token and position t > 0 is the label token t - 1, which is the word it is credited to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset
from transformers import BatchEncoding, PretrainedConfig, PreTrainedTokenizerBase

from ..tasks import DataArgs, get_task, soda, squad, sst2, wikitext
from ..tasks.prompting import uses_prompts
from ..tasks.soda import build_example, turn_pairs


@dataclass
class Words:
    """The word occurrences of one example: their text, whether each is a special token, and per stack the
    occurrence index of every input position.

    Attributes:
        texts: one entry per word occurrence, in order of first appearance.
        special: whether the occurrence is a special token rather than text.
        positions: stack ("encoder"/"decoder") -> occurrence index per input position of that stack.
        stack_of: the stack each occurrence belongs to (for context windows).
    """

    texts: list[str] = field(default_factory=list)
    special: list[bool] = field(default_factory=list)
    positions: dict[str, list[int]] = field(default_factory=dict)
    stack_of: list[str] = field(default_factory=list)

    def add(self, text: str, special: bool, stack: str) -> int:
        self.texts.append(text)
        self.special.append(special)
        self.stack_of.append(stack)
        return len(self.texts) - 1


@dataclass
class Example:
    """One model input (unpadded) with its words."""

    features: dict[str, list[int]]
    words: Words


def _word_text(text: str) -> str:
    """A word as shown in reports: byte-level BPE offsets include the space before a word, which is dropped;
    a whitespace-only word (a WikiText line break) is shown as a symbol."""
    stripped = text.strip()
    if stripped:
        return stripped
    return "⏎" if "\n" in text else "␣"


def _map_positions(
    words: Words,
    stack: str,
    encoding: BatchEncoding,
    index: int,
    texts: list[str],
    tokenizer: PreTrainedTokenizerBase,
    ids: list[int],
) -> list[int]:
    """Occurrence index of every position of encoding `index`; words of sequence s are read from `texts[s]`."""
    occurrence: dict[tuple[int, int], int] = {}
    out = []
    sequence_ids = encoding.sequence_ids(index)
    for position, word in enumerate(encoding.word_ids(index)):
        if word is None:
            out.append(words.add(tokenizer.convert_ids_to_tokens(ids[position]), True, stack))
            continue
        sequence = sequence_ids[position] or 0
        key = (sequence, word)
        if key not in occurrence:
            span = encoding.word_to_chars(index, word, sequence_index=sequence)
            occurrence[key] = words.add(_word_text(texts[sequence][span.start : span.end]), False, stack)
        out.append(occurrence[key])
    return out


def _decoder_positions(
    words: Words, label_positions: list[int], tokenizer: PreTrainedTokenizerBase, start: int
) -> list[int]:
    """Decoder inputs are [start] + labels[:-1]: position t > 0 belongs to the word of label t - 1."""
    first = words.add(tokenizer.convert_ids_to_tokens(start) or "<decoder start>", True, "decoder")
    return [first, *label_positions[:-1]]


def classification_view(rows: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[Example]:
    sentences = list(rows["sentence"])
    encoding = tokenizer(sentences, max_length=max_length, truncation=True)
    examples = []
    for i, sentence in enumerate(sentences):
        features = {k: encoding[k][i] for k in encoding.keys()}
        words = Words()
        words.positions["encoder"] = _map_positions(
            words, "encoder", encoding, i, [sentence], tokenizer, features["input_ids"]
        )
        examples.append(Example(features, words))
    return examples


def qa_view(rows: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int, stride: int) -> list[Example]:
    # As `squad.tokenize_windows`: question first (right padding), only the context is cut into windows.
    questions = [q.lstrip() for q in rows["question"]]
    contexts = list(rows["context"])
    encoding = tokenizer(
        questions,
        contexts,
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
    )
    samples = encoding["overflow_to_sample_mapping"]
    examples = []
    for i, sample in enumerate(samples):
        features = {k: encoding[k][i] for k in encoding.keys() if k != "overflow_to_sample_mapping"}
        words = Words()
        texts = [questions[sample], contexts[sample]]
        words.positions["encoder"] = _map_positions(
            words, "encoder", encoding, i, texts, tokenizer, features["input_ids"]
        )
        examples.append(Example(features, words))
    return examples


def seq2seq_view(
    sources: list[str],
    targets: list[str],
    tokenizer: PreTrainedTokenizerBase,
    model_config: PretrainedConfig,
    prefix: str,
    max_source: int,
    max_target: int,
) -> list[Example]:
    source_texts = [prefix + s for s in sources]
    encoding = tokenizer(source_texts, max_length=max_source, truncation=True)
    labels = tokenizer(text_target=targets, max_length=max_target, truncation=True)
    start = model_config.decoder_start_token_id
    examples = []
    for i in range(len(sources)):
        features = {k: encoding[k][i] for k in encoding.keys()}
        features["labels"] = labels["input_ids"][i]
        words = Words()
        words.positions["encoder"] = _map_positions(
            words, "encoder", encoding, i, [source_texts[i]], tokenizer, features["input_ids"]
        )
        label_positions = _map_positions(words, "decoder", labels, i, [targets[i]], tokenizer, features["labels"])
        words.positions["decoder"] = _decoder_positions(words, label_positions, tokenizer, start)
        examples.append(Example(features, words))
    return examples


def wikitext_view(rows: Dataset, tokenizer: PreTrainedTokenizerBase, block: int) -> list[Example]:
    """As `wikitext.group_texts`: all lines concatenated, cut into blocks of `block_size`, the tail dropped.

    The task concatenates per `map` batch of 1,000 lines, dropping each batch's tail; this view concatenates the
    whole split, so beyond 1,000 lines the blocks shift slightly (the routing statistics do not depend on it).
    """
    lines = list(rows["text"])
    encoding = tokenizer(lines)
    words = Words()
    stream_ids: list[int] = []
    stream_positions: list[int] = []
    for i, line in enumerate(lines):
        ids = encoding["input_ids"][i]
        stream_ids += ids
        stream_positions += _map_positions(words, "decoder", encoding, i, [line], tokenizer, ids)
    examples = []
    for start in range(0, len(stream_ids) // block * block, block):
        ids = stream_ids[start : start + block]
        block_words = Words(
            words.texts, words.special, {"decoder": stream_positions[start : start + block]}, words.stack_of
        )
        examples.append(Example({"input_ids": ids, "attention_mask": [1] * block, "labels": list(ids)}, block_words))
    return examples


def dialogue_view(rows: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[Example]:
    contexts, responses = turn_pairs({"dialogue": list(rows["dialogue"])})
    context_enc = tokenizer(contexts, add_special_tokens=False)
    response_enc = tokenizer(responses, add_special_tokens=False)
    eos = tokenizer.eos_token_id
    examples = []
    for i, (context, response) in enumerate(zip(contexts, responses, strict=True)):
        context_ids, response_ids = context_enc["input_ids"][i], response_enc["input_ids"][i]
        features = build_example(context_ids, response_ids, eos, max_length)
        words = Words()
        context_positions = _map_positions(words, "decoder", context_enc, i, [context], tokenizer, context_ids)
        response_positions = _map_positions(words, "decoder", response_enc, i, [response], tokenizer, response_ids)
        # The same truncation as the features, applied to position indices: build_example keeps the response
        # (cut to fit) and the context's last tokens, with an EOS after each; the EOS markers become -1.
        kept = build_example(
            list(range(len(context_ids))), [len(context_ids) + j for j in range(len(response_ids))], -1, max_length
        )
        combined = context_positions + response_positions
        positions = []
        for index in kept["input_ids"]:
            positions.append(words.add(tokenizer.eos_token, True, "decoder") if index == -1 else combined[index])
        words.positions["decoder"] = positions
        examples.append(Example(features, words))
    return examples


def _pair_view(task: str) -> Any:
    """The view of a sequence-to-sequence task: its own pairs, prefix and lengths (`Task.pair_format`)."""
    form = get_task(task).pair_format

    def view(rows: Dataset, tokenizer: Any, data: DataArgs, model_config: PretrainedConfig) -> list[Example]:
        sources, targets = form.texts(rows, data)
        prefix = form.prefix(data, model_config)
        return seq2seq_view(sources, targets, tokenizer, model_config, prefix, *form.lengths(data))

    return view


# Task name -> its view of the validation rows, with the defaults the task applies when DataArgs leaves a length
# unset. Adding a task to `adamoe analyze` = one row here.
VIEWS: dict[str, Any] = {
    "sst2": lambda rows, tok, data, cfg: classification_view(rows, tok, data.max_seq_length or sst2.MAX_SEQ_LENGTH),
    "squad": lambda rows, tok, data, cfg: qa_view(
        rows, tok, data.max_seq_length or squad.MAX_SEQ_LENGTH, data.doc_stride
    ),
    "wmt19": _pair_view("wmt19"),
    "cnn_dailymail": _pair_view("cnn_dailymail"),
    "wikitext": lambda rows, tok, data, cfg: wikitext_view(
        rows, tok, data.block_size or min(wikitext.MAX_BLOCK_SIZE, tok.model_max_length)
    ),
    "soda": lambda rows, tok, data, cfg: dialogue_view(rows, tok, data.max_seq_length or soda.MAX_SEQ_LENGTH),
}


def build_view(
    task: str, rows: Dataset, tokenizer: PreTrainedTokenizerBase, data: DataArgs, model_config: PretrainedConfig
) -> list[Example]:
    """The validation examples of `task` as the model sees them, with words (see the module docstring)."""
    if not tokenizer.is_fast:
        raise ValueError(
            f"adamoe analyze maps sub-word pieces back to words with a fast tokenizer's word_ids(); "
            f"{type(tokenizer).__name__} is a slow tokenizer (e.g. FSMT's)."
        )
    prompted = (task == "soda" and getattr(tokenizer, "chat_template", None)) or (
        get_task(task).pair_format is not None and uses_prompts(model_config)
    )
    if prompted:
        raise ValueError(
            f"adamoe analyze does not yet map the decoder-only prompt formulation of {task} back to words; it "
            "analyses encoder-decoder models and DialoGPT-style dialogue."
        )
    return VIEWS[task](rows, tokenizer, data, model_config)


def _padded(values: list[list[int]], pad: int) -> list[list[int]]:
    width = max(len(v) for v in values)
    return [v + [pad] * (width - len(v)) for v in values]


def collate(examples: list[Example], pad_token_id: int) -> dict[str, Any]:
    """Right-padded tensors; labels padded with -100 and no `decoder_input_ids`, so the model shifts the labels
    itself and the MoE pre-hook masks decoder padding from `labels != -100`, as in evaluation."""
    import torch

    keys = examples[0].features.keys()
    batch = {}
    for key in keys:
        pad = -100 if key == "labels" else (0 if key in ("attention_mask", "token_type_ids") else pad_token_id)
        batch[key] = torch.tensor(_padded([e.features[key] for e in examples], pad))
    return batch
