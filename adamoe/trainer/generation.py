"""Evaluation by generation for decoder-only models in the sequence-to-sequence trainer.

`Seq2SeqTrainer.prediction_step` with `predict_with_generate` hands the whole batch to `generate()`. For an
encoder-decoder model that is the source; for a decoder-only model the batch holds `prompt + target`
(`tasks/prompting.py`), so it would continue after the reference. Here the loss is the teacher-forced loss on the
targets, as in training, and generation starts from each row's prompt (its tokens before the first label,
padding left out), left-padded and batched. The step returns the generated continuation and the target labels,
both starting at the first answer token, so the task's `compute_metrics` decodes and scores them as it does an
encoder-decoder model's output.
"""

from __future__ import annotations

from typing import Any

import torch

from ..tasks.causal_lm import generate_continuations
from ..tasks.prompting import prompt_of


def decoder_only_prediction_step(
    trainer: Any, model: torch.nn.Module, inputs: dict[str, Any]
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """`(loss, generated (batch, new tokens), labels (batch, target tokens))` for one evaluation batch."""
    inputs = trainer._prepare_inputs(inputs)
    labels = inputs["labels"]  # (batch, seq)
    with torch.no_grad(), trainer.compute_loss_context_manager():
        # A copy: with label smoothing (the paper configs' 0.1) the Trainer pops the labels out of what it is given.
        loss = trainer.compute_loss(model, dict(inputs)).detach().mean()
    tokenizer = trainer.processing_class
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    prompts = [
        prompt_of(ids, row, mask)
        for ids, row, mask in zip(
            inputs["input_ids"].tolist(), labels.tolist(), inputs["attention_mask"].tolist(), strict=True
        )
    ]
    settings = {"num_beams": trainer.args.generation_num_beams} if trainer.args.generation_num_beams else {}
    generated = generate_continuations(
        trainer.accelerator.unwrap_model(model),
        prompts,
        pad=pad,
        eos=eos,
        max_new_tokens=trainer.args.generation_max_length or 128,
        **settings,
    )  # (batch, new tokens)
    targets = [[t for t in row if t != -100] for row in labels.tolist()]
    width = max(1, max(len(t) for t in targets))
    target_ids = torch.tensor([t + [-100] * (width - len(t)) for t in targets], device=labels.device)
    return loss, generated, target_ids
