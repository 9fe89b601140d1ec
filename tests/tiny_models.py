"""The table of tiny architectures that the core tests are parametrised over (one row per supported family)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForSequenceClassification,
    FSMTConfig,
    FSMTForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
    RobertaConfig,
    RobertaForSequenceClassification,
    T5Config,
    T5ForConditionalGeneration,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VOCAB = 100


@dataclass(frozen=True)
class Arch:
    """One row of the architecture table: how to build a tiny model and feed it."""

    name: str
    model_class: type
    config: Any
    seq2seq: bool = False
    causal: bool = False

    def build(self, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        # A copy: moeify writes into the config, and the table's configs are shared by all tests.
        return self.model_class(copy.deepcopy(self.config)).eval()

    def inputs(self, batch: int = 3, seq_len: int = 7, seed: int = 1, padded: bool = True) -> dict[str, torch.Tensor]:
        """A batch with left-aligned padding in the first sample (and in its labels for seq2seq)."""
        g = torch.Generator().manual_seed(seed)
        input_ids = torch.randint(3, VOCAB, (batch, seq_len), generator=g)
        attention_mask = torch.ones(batch, seq_len, dtype=torch.long)
        if padded:
            attention_mask[0, seq_len - 2 :] = 0
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.seq2seq:
            out["decoder_input_ids"] = torch.randint(3, VOCAB, (batch, seq_len - 2), generator=g)
        return out


_COMMON_BART = dict(
    vocab_size=VOCAB,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    max_position_embeddings=64,
)


def _t5_config(feed_forward_proj: str) -> T5Config:
    """T5 v1.0 ("relu") or v1.1/Flan ("gated-gelu")."""
    return T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_ff=64,
        d_kv=16,
        num_layers=2,
        num_heads=2,
        feed_forward_proj=feed_forward_proj,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )


ARCHITECTURES = [
    Arch(
        "bert",
        BertForSequenceClassification,
        BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    ),
    Arch(
        "roberta",
        RobertaForSequenceClassification,
        RobertaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
    ),
    Arch(
        "gpt2",
        GPT2LMHeadModel,
        GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64),
        causal=True,
    ),
    Arch(
        "t5",
        T5ForConditionalGeneration,
        _t5_config("relu"),
        seq2seq=True,
    ),
    Arch(
        "t5-gated",
        T5ForConditionalGeneration,
        _t5_config("gated-gelu"),
        seq2seq=True,
    ),
    Arch("bart", BartForConditionalGeneration, BartConfig(**_COMMON_BART), seq2seq=True),
    Arch(
        "fsmt",
        FSMTForConditionalGeneration,
        FSMTConfig(
            langs=["de", "en"],
            src_vocab_size=VOCAB,
            tgt_vocab_size=VOCAB,
            **{k: v for k, v in _COMMON_BART.items() if k != "vocab_size"},
            pad_token_id=1,
            eos_token_id=2,
            bos_token_id=0,
            decoder_start_token_id=2,
        ),
        seq2seq=True,
    ),
]


GENERATORS = [a for a in ARCHITECTURES if a.causal or a.seq2seq]


def arch_by_name(name: str) -> Arch:
    return next(a for a in ARCHITECTURES if a.name == name)
