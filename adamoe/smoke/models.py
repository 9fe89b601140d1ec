"""Tiny models and tokenizers for the smoke kit, built offline: tokenizers trained in code, models from configs.

The tokenizers are trained with the `tokenizers` library on the task's own generated text and wrapped in the
transformers class of their family, so `AutoTokenizer.from_pretrained(folder)` loads a *fast* tokenizer with
offsets and `word_ids()` (SQuAD post-processing and `adamoe analyze` need both):

| family | tokenizer | tasks |
|---|---|---|
| BERT | WordPiece with [PAD]/[UNK]/[CLS]/[SEP]/[MASK], lowercasing, `##` continuations | sst2, squad |
| T5 | Unigram over Metaspace (`▁`) pieces, `<pad>`=0, `</s>`=1, `<unk>`=2 | wmt19 |
| BART | byte-level BPE with `<s>`, `<pad>`, `</s>`, `<unk>`, `<mask>` | cnn_dailymail |
| GPT-2 | byte-level BPE with `<|endoftext|>` | wikitext, soda |

Translation uses T5 rather than the paper's FSMT: transformers' FSMT tokenizer is a slow, Python-only
tokenizer (moses + BPE files, no `word_ids()`), and T5 adds a third FFN layout (`DenseReluDense`) to the kit.

The vocabularies are deliberately small, so rarer words split into several pieces and the word-merging of
`adamoe analyze` has something to merge. Dropout is off: with a few dozen steps it only slows learning.

How big a tiny model is lives here too, once (`TinySize`): the kit's models are `KIT_SIZE`, and the unit tests
build their architecture table and toy classifiers from `UNIT_SIZE`'s fields in each family's spelling
(`size.bert()`, `size.bart()`, `size.t5()`, `size.gpt2()`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    BartConfig,
    BartTokenizerFast,
    BertConfig,
    BertTokenizer,
    GPT2Config,
    GPT2TokenizerFast,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    T5Config,
    T5TokenizerFast,
)

from ..tasks import get_task


@dataclass(frozen=True)
class TinySize:
    """The dimensions of a tiny model, with the config fields that spell them in each family.

    Attributes:
        hidden: model width (`hidden_size`, `d_model`, `n_embd`).
        ffn: FFN inner width (`intermediate_size`, `d_ff`, `*_ffn_dim`, `n_inner`).
        layers: layers (per stack for encoder-decoders).
        heads: attention heads.
        positions: position embeddings, the longest input.
    """

    hidden: int
    ffn: int
    layers: int = 2
    heads: int = 2
    positions: int = 128

    def bert(self) -> dict[str, Any]:
        """BERT's names, which the Llama-family decoders share."""
        return {
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "max_position_embeddings": self.positions,
        }

    def bart(self) -> dict[str, Any]:
        """BART's names (and mBART's, Marian's, Pegasus', M2M-100's, FSMT's)."""
        return {
            "d_model": self.hidden,
            "encoder_layers": self.layers,
            "decoder_layers": self.layers,
            "encoder_attention_heads": self.heads,
            "decoder_attention_heads": self.heads,
            "encoder_ffn_dim": self.ffn,
            "decoder_ffn_dim": self.ffn,
            "max_position_embeddings": self.positions,
        }

    def t5(self) -> dict[str, Any]:
        """T5's names (and mT5's, UMT5's); T5 has relative positions, so no position count."""
        return {
            "d_model": self.hidden,
            "d_ff": self.ffn,
            "d_kv": self.hidden // self.heads,
            "num_layers": self.layers,
            "num_heads": self.heads,
        }

    def gpt2(self) -> dict[str, Any]:
        return {
            "n_embd": self.hidden,
            "n_inner": self.ffn,
            "n_layer": self.layers,
            "n_head": self.heads,
            "n_positions": self.positions,
        }


# The kit's models: big enough to learn the generated tasks in a few dozen steps.
KIT_SIZE = TinySize(hidden=64, ffn=128)
# The unit tests': the smallest with two layers and two heads, so a parametrised test over 25 families is quick.
UNIT_SIZE = TinySize(hidden=32, ffn=64, positions=64)
POSITIONS = KIT_SIZE.positions  # the kit tokenizers' model_max_length
NO_DROPOUT_BERT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BART_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _bpe_parts(tokenizer: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = json.loads(tokenizer.to_str())["model"]
    return model["vocab"], [tuple(merge) for merge in model["merges"]]


def wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 200) -> PreTrainedTokenizerBase:
    trainer_tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    trainer_tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    trainer_tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer_tok.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS)
    )
    # BertTokenizer rebuilds BERT's own normaliser, pre-tokenizer and [CLS] ... [SEP] post-processor around the vocab.
    return BertTokenizer(vocab=trainer_tok.get_vocab(), model_max_length=POSITIONS)


def byte_level_bpe(texts: Iterable[str], specials: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def gpt2_tokenizer(texts: Iterable[str], vocab_size: int = 400) -> PreTrainedTokenizerBase:
    vocab, merges = _bpe_parts(byte_level_bpe(texts, ["<|endoftext|>"], vocab_size))
    return GPT2TokenizerFast(vocab=vocab, merges=merges, model_max_length=POSITIONS)


def bart_tokenizer(texts: Iterable[str], vocab_size: int = 400) -> PreTrainedTokenizerBase:
    vocab, merges = _bpe_parts(byte_level_bpe(texts, BART_SPECIALS, vocab_size))
    return BartTokenizerFast(vocab=vocab, merges=merges, model_max_length=POSITIONS)


def t5_tokenizer(texts: Iterable[str], vocab_size: int = 160) -> PreTrainedTokenizerBase:
    """A Unigram (SentencePiece-style) tokenizer whose pieces are the corpus's most frequent words, then characters.

    Built by hand rather than with `UnigramTrainer`, which on a corpus this small keeps mostly single characters;
    the scores are log frequencies, so a known word is one piece and any other word splits into characters.
    """
    words = Counter(word for text in texts for word in text.split())
    total = sum(words.values())
    chars = sorted({char for word in words for char in word})
    budget = max(vocab_size - 4 - len(chars), 0)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + word, math.log(count / total)) for word, count in words.most_common(budget)]
    vocab += [(char, -20.0) for char in chars]  # fall-back pieces: far less likely than any whole word
    # No sentinel ids: the kit never pretrains with span corruption, and 100 unused rows would dominate the vocab.
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=POSITIONS)


def tiny_bert_config(vocab_size: int, size: TinySize = UNIT_SIZE, **overrides: Any) -> BertConfig:
    """A dropout-free BERT config of `size` (the unit tests' by default); `overrides` are further config fields."""
    return BertConfig(**{"vocab_size": vocab_size, **size.bert(), **NO_DROPOUT_BERT, **overrides})


def bert_config(tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    return tiny_bert_config(len(tokenizer), KIT_SIZE, pad_token_id=tokenizer.pad_token_id)


def t5_config(tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    return T5Config(
        vocab_size=len(tokenizer),
        **KIT_SIZE.t5(),
        feed_forward_proj="relu",
        dropout_rate=0.0,
        decoder_start_token_id=tokenizer.pad_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def bart_config(tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    return BartConfig(
        vocab_size=len(tokenizer),
        **KIT_SIZE.bart(),
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
    )


def gpt2_config(tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    return GPT2Config(
        vocab_size=len(tokenizer),
        **KIT_SIZE.gpt2(),
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


TokenizerFactory = Callable[[Iterable[str]], PreTrainedTokenizerBase]
ConfigFactory = Callable[[PreTrainedTokenizerBase], PretrainedConfig]

# task -> (tokenizer, model config); the head is the task's own (`Task.model_class`, `Task.model_kwargs`)
FAMILIES: dict[str, tuple[TokenizerFactory, ConfigFactory]] = {
    "sst2": (wordpiece_tokenizer, bert_config),
    "squad": (wordpiece_tokenizer, bert_config),
    "wmt19": (t5_tokenizer, t5_config),
    "cnn_dailymail": (bart_tokenizer, bart_config),
    "wikitext": (gpt2_tokenizer, gpt2_config),
    "soda": (gpt2_tokenizer, gpt2_config),
}


def write_tiny_model(task: str, texts: Iterable[str], folder: Path, seed: int = 0) -> Path:
    """Train the task family's tokenizer on `texts`, build a randomly initialised tiny model, save both.

    Returns:
        `folder`, which `AutoTokenizer.from_pretrained` and the task's `model_class.from_pretrained` load.
    """
    make_tokenizer, make_config = FAMILIES[task]
    tokenizer = make_tokenizer(texts)
    config = make_config(tokenizer)
    head = get_task(task)
    for key, value in head.model_kwargs.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = head.model_class.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
