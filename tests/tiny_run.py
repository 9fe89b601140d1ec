"""A tiny offline model folder and SST-2 files, for tests that run `finetune()` or the CLI end to end.

The model folder is what `--model PATH` expects: a 2-layer BERT (or, to test refusals, ALBERT) built from a
config and saved with a WordPiece tokenizer whose vocabulary is written here; the data are GLUE-format TSVs whose
label is learnable (positive sentences hold a positive word), so losses fall within a few steps.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    BertForSequenceClassification,
    BertTokenizer,
)

from adamoe.smoke.models import UNIT_SIZE, tiny_bert_config

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE = ["good", "great", "fun", "moving", "sharp"]
NEGATIVE = ["bad", "dull", "slow", "flat", "weak"]
NEUTRAL = ["the", "a", "film", "movie", "plot", "cast", "is", "was", "very", "and", "story", "ending", "."]


def write_model_folder(folder: Path, *, architecture: str = "bert", seed: int = 0) -> Path:
    """Save a tiny dense classifier and its tokenizer to `folder`; returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIALS + POSITIVE + NEGATIVE + NEUTRAL
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(str(folder))
    torch.manual_seed(seed)
    if architecture == "bert":
        model = BertForSequenceClassification(tiny_bert_config(len(vocab), num_labels=2))
    elif architecture == "albert":  # not in adamoe's FFN table (its layers share one FFN)
        config = AlbertConfig(
            vocab_size=len(vocab),
            embedding_size=16,
            hidden_size=UNIT_SIZE.hidden,
            num_hidden_layers=1,
            num_attention_heads=UNIT_SIZE.heads,
            intermediate_size=UNIT_SIZE.ffn,
            num_labels=2,
        )
        model = AlbertForSequenceClassification(config)
    else:
        raise ValueError(architecture)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sst2_rows(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """`n` (sentence, label) pairs: 3-8 neutral words around one positive or negative word."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(3, 8))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        rows.append((" ".join(words), label))
    return rows


def write_sst2(path: Path, n: int, seed: int = 0, *, header: str = "sentence\tlabel") -> Path:
    """A GLUE SST-2 TSV with a header row."""
    lines = [header] + [f"{sentence}\t{label}" for sentence, label in sst2_rows(n, seed)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# Four heads over two key-value heads, so grouped-query attention is exercised end to end.
DECODER = {**UNIT_SIZE.bert(), "num_attention_heads": 4, "num_key_value_heads": 2}


def write_decoder_folder(family: str, tokenizer_dir: Path, folder: Path) -> Path:
    """A tiny Llama (dense) or Mixtral (8 experts, top-2) around the tokenizer saved in `tokenizer_dir`."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = {"vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id}
    ids |= {"bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**DECODER, **ids))
    elif family == "mixtral":
        config = MixtralConfig(
            **{**DECODER, "intermediate_size": 32}, **ids, num_local_experts=8, num_experts_per_tok=2
        )
        model = MixtralForCausalLM(config)
    else:
        raise ValueError(family)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
