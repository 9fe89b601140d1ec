"""Pieces shared by the causal language-modelling tasks and the decoder-only formulations: perplexity over
predicted tokens, padding, and generation from prompts.

Perplexity must be exp(total NLL / number of predicted tokens). The Trainer's `eval_loss` is a mean of
per-batch means, which equals that only when every batch predicts the same number of tokens (true for
wikitext's fixed blocks, false for soda's variable-length responses), and it would include any auxiliary
loss a trainer adds. So these tasks reduce the logits of every batch to `[summed NLL, token count]` per row
(`metrics.token_nll`, the Trainer's `preprocess_logits_for_metrics`) and `compute_metrics` divides the sums.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .metrics import perplexity_from_losses

if TYPE_CHECKING:
    from transformers import DataCollatorForSeq2Seq, EvalPrediction, PreTrainedTokenizerBase


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Uses EOS as the pad token when the tokenizer has none (GPT-2, DialoGPT); returns the tokenizer.

    Safe because padded positions get attention mask 0 and label -100, so the pad id is never attended to or
    predicted.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def padding_lm_collator(tokenizer: PreTrainedTokenizerBase, model: Any = None) -> DataCollatorForSeq2Seq:
    """Pads `input_ids`/`attention_mask` with the pad token and `labels` with -100 (variable-length rows).

    `DataCollatorForSeq2Seq` does exactly that padding; `model` is not passed on because a decoder-only model
    has no `decoder_input_ids` to build.
    """
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(ensure_pad_token(tokenizer), model=None, label_pad_token_id=-100)


def perplexity_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """`compute_metrics` for rows reduced by `metrics.token_nll`: token-weighted `perplexity` and `nll`."""
    rows = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    rows = np.asarray(rows, dtype=np.float64)  # (num_rows, 2): summed NLL, predicted tokens
    total_nll, n_tokens = float(rows[:, 0].sum()), int(rows[:, 1].sum())
    return {"perplexity": perplexity_from_losses(total_nll, n_tokens), "nll": total_nll / n_tokens}


def left_padded(prompts: list[list[int]], pad: int, device: Any = None) -> tuple[Any, Any]:
    """`(input_ids, attention_mask)`, each `(batch, longest prompt)`, padded on the left so that every prompt ends
    where generation starts."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


def generate_continuations(
    model: Any, prompts: list[list[int]], *, pad: int, eos: int, max_new_tokens: int, **generate_kwargs: Any
) -> Any:
    """`(batch, new tokens)`: what a decoder-only model generates after each prompt (greedy unless
    `generate_kwargs` say otherwise), one left-padded batch; rows that stop early are padded with `pad`."""
    import torch

    ids, mask = left_padded(prompts, pad, device=next(model.parameters()).device)
    settings = {"do_sample": False, **generate_kwargs, "max_new_tokens": max_new_tokens}
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad, eos_token_id=eos, **settings)
    return out[:, ids.shape[1] :]
