"""Language modelling: WikiText-103 (raw), gpt2-medium, perplexity (paper Table 3, "GPT-2 / WikiText / PPL").

As in HF `run_clm.py`: every line is tokenized, the token stream is concatenated and cut into blocks of
`block_size` tokens (the remainder is dropped), and each block is its own label sequence. Perplexity is
exp(total NLL / predicted tokens) over the validation blocks (see `causal_lm`). `dataset_config`
"wikitext-2-raw-v1" selects WikiText-2.

Local files: raw text (`.txt`, `.tokens`, `.raw`; one row per line, WikiText `wiki.*.tokens` style), or a
`text` column as JSON/JSONL/CSV/Parquet.
"""

from __future__ import annotations

from functools import partial
from itertools import chain
from typing import TYPE_CHECKING, Any

from .base import DataArgs, PreparedData, Task, no_prediction_files, prepare_splits, tokenize_split
from .causal_lm import perplexity_metrics
from .io import Schema, TaskInputError, read_rows
from .metrics import token_nll

if TYPE_CHECKING:
    from datasets import DatasetDict
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

SCHEMA = Schema(
    columns=("text",),
    example={"text": " The lobster is a species of clawed lobster . \n"},
    note="or raw text with one row per line",
)
FORMATS = (".txt", ".tokens", ".raw", ".json", ".jsonl", ".csv", ".parquet")
MAX_BLOCK_SIZE = 1024  # GPT-2's context length


def group_texts(batch: dict[str, list], block_size: int) -> dict[str, list]:
    """Concatenates the token lists of a batch and cuts them into `block_size` blocks, labels = inputs.

    The tail shorter than a block is dropped, as in `run_clm.py`; with batched `map` that loses at most one
    partial block per 1000 lines.
    """
    concatenated = {key: list(chain.from_iterable(batch[key])) for key in batch}
    total = len(concatenated["input_ids"]) // block_size * block_size
    blocks = {key: [ids[i : i + block_size] for i in range(0, total, block_size)] for key, ids in concatenated.items()}
    blocks["labels"] = [list(block) for block in blocks["input_ids"]]
    return blocks


def preprocess(
    raw: DatasetDict, tokenizer: PreTrainedTokenizerBase, data: DataArgs, model_config: PretrainedConfig | None = None
) -> PreparedData:
    block_size = data.block_size or min(MAX_BLOCK_SIZE, tokenizer.model_max_length)
    from datasets import DatasetDict

    tokenized = DatasetDict(
        {split: tokenize_split(raw, split, lambda batch: tokenizer(batch["text"]), data) for split in raw}
    )
    prepared = prepare_splits(tokenized, partial(group_texts, block_size=block_size), data)
    for split, blocks in (("train", prepared.train), ("validation", prepared.eval)):
        if blocks is not None and len(blocks) == 0:
            raise TaskInputError(
                f"The {split} split has fewer than block_size={block_size} tokens; lower block_size in the data "
                "section of the run config, or give more text."
            )
    return prepared


def block_collator(tokenizer: PreTrainedTokenizerBase, model: Any = None) -> Any:
    """Every block has exactly block_size tokens, so nothing needs padding."""
    from transformers import default_data_collator

    return default_data_collator


WIKITEXT = Task(
    name="wikitext",
    description="Causal language modelling of Wikipedia articles (WikiText-103, raw).",
    kind="causal_lm",
    hub_dataset=("Salesforce/wikitext", "wikitext-103-raw-v1"),
    hub_task_type="text-generation",
    default_model="gpt2-medium",
    default_dataset="WikiText-103 raw (Salesforce/wikitext, wikitext-103-raw-v1)",
    metric_names=("perplexity", "nll"),
    main_metric="perplexity",
    greater_is_better=False,
    auto_model="AutoModelForCausalLM",
    read_file=partial(read_rows, schema=SCHEMA, formats=FORMATS),
    offline_example=("wiki.train.tokens", "wiki.valid.tokens"),
    preprocess=preprocess,
    compute_metrics=lambda prepared, tokenizer, data: perplexity_metrics,
    prediction_files=no_prediction_files,
    data_collator=block_collator,
    preprocess_logits_for_metrics=token_nll,
)
