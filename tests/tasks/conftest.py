"""Tiny offline tokenizers and the optional shared data folder for the task tests.

The tokenizers are built from vocab files written to a temporary folder and loaded with `from_pretrained`
(in transformers 5, `BertTokenizer(vocab_file=...)` and `GPT2Tokenizer(vocab_file=..., merges_file=...)`
silently build tokenizers without the vocabulary). Both are character/byte level, so every word is
representable and offsets are exact, which is all preprocessing and post-processing tests need.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import BertTokenizer, FSMTTokenizer, GPT2Tokenizer, PreTrainedTokenizerBase, T5Tokenizer

# tests/tasks/conftest.py -> repo root is parents[2]; the shared data sits next to the repo.
SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BERT_WORDS = ["the", "cat", "sat", "on", "mat", "paris", "france", "capital", "is", "of", "what", "where"]


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or a skip when that folder (or the file) is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path} (tests using ../shared/data skip on a fresh clone)")
    return path


@pytest.fixture(name="shared_path")
def shared_path_fixture() -> Callable[..., Path]:
    """`shared_path` for tests: `shared_path("sst2", "train.tsv")`, skipping when the file is absent."""
    return shared_path


@pytest.fixture(scope="session")
def bert_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    """Lowercasing WordPiece tokenizer: a few whole words, otherwise one token per character."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = BERT_SPECIALS + BERT_WORDS + chars + [f"##{c}" for c in chars]
    folder = tmp_path_factory.mktemp("bert_tokenizer")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="session")
def fsmt_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    """German-English FSMT tokenizer, one BPE piece per character, whose target vocabulary is ordered
    differently from its source vocabulary, so source and target ids of the same text differ."""
    pytest.importorskip("sacremoses", reason="FSMTTokenizer needs sacremoses")
    folder = tmp_path_factory.mktemp("fsmt_tokenizer")
    chars = list(string.ascii_letters + string.digits + string.punctuation)

    def vocab(order: list[str]) -> dict[str, int]:
        pieces = ["<s>", "<pad>", "</s>", "<unk>"] + [p for c in order for p in (c, f"{c}</w>")]
        return {piece: i for i, piece in enumerate(pieces)}

    (folder / "vocab-src.json").write_text(json.dumps(vocab(chars)), encoding="utf-8")
    (folder / "vocab-tgt.json").write_text(json.dumps(vocab(chars[::-1])), encoding="utf-8")
    (folder / "merges.txt").write_text("", encoding="utf-8")
    config = {"langs": ["de", "en"], "do_lower_case": False, "model_max_length": 1024}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return FSMTTokenizer.from_pretrained(str(folder))


@pytest.fixture
def real_gpt2_tokenizer() -> PreTrainedTokenizerBase:
    return GPT2Tokenizer.from_pretrained(str(shared_path("tokenizers", "gpt2")))


@pytest.fixture(scope="session")
def real_t5_tokenizer() -> PreTrainedTokenizerBase:
    return T5Tokenizer.from_pretrained(str(shared_path("tokenizers", "t5")))


@pytest.fixture
def squad_example() -> dict:
    """A question whose answer lies only in the second window at max_seq_length=20, doc_stride=4.

    With `bert_tokenizer` every word here is one token: the question is 4 tokens (where, is, paris, ?), so a
    20-token window holds 13 context tokens. The context has 21 tokens and "capital of france" is tokens
    17-19, so with 4 tokens of overlap the answer lies only in the second window (context tokens 9-20).
    """
    context = "the cat sat on the mat . the cat sat on the mat . paris is the capital of france ."
    answer = "capital of france"
    return {
        "id": "q1",
        "title": "t",
        "context": context,
        "question": "  where is paris?",  # leading whitespace, as some SQuAD questions have
        "answers": {"text": [answer], "answer_start": [context.index(answer)]},
    }
