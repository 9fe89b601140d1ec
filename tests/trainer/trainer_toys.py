"""Tiny offline models and data for the trainer tests (imported by the test modules)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import BertForSequenceClassification

import adamoe
from adamoe.smoke.models import tiny_bert_config
from adamoe.trainer import AdaMoETrainer

VOCAB = 100


def tiny_bert(*, moe: bool = True, seed: int = 0, threshold: float = 0.2) -> BertForSequenceClassification:
    """Two-layer BERT classifier without dropout (so train- and eval-mode forwards agree); with `moe`, 4 experts
    and a wide router init so that the adaptive gate sends some, not all, tokens to two experts."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(VOCAB))
    if moe:
        adamoe.moeify(model, adamoe.MoEConfig(num_experts=4, threshold=threshold, router_init_std=1.0))
    return model


def toy_dataset(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """`n` sequences of 3..9 random token ids; the label is the parity of the first token."""
    generator = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(n):
        length = int(torch.randint(3, 10, (1,), generator=generator))
        ids = torch.randint(1, VOCAB, (length,), generator=generator).tolist()
        data.append({"input_ids": ids, "labels": ids[0] % 2})
    return data


def pad_collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Right-pad `input_ids` with 0 and build the attention mask."""
    width = max(len(f["input_ids"]) for f in features)
    input_ids = torch.zeros(len(features), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, feature in enumerate(features):
        input_ids[row, : len(feature["input_ids"])] = torch.tensor(feature["input_ids"])
        attention_mask[row, : len(feature["input_ids"])] = 1
    labels = torch.tensor([f["labels"] for f in features])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class SpyTrainer(AdaMoETrainer):
    """Records, for every training forward, the sampler's epoch and the dataset indices of the batch."""

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if model.training and "sample_index" in inputs:
            self.seen.append((self.training_order.epoch, inputs["sample_index"].tolist()))
        return super().compute_loss(model, inputs, *args, **kwargs)


def spy_trainer(**kwargs: Any) -> SpyTrainer:
    """A `SpyTrainer` with `pad_collate`; `trainer.seen` lists `(epoch, batch indices)` per training forward."""
    trainer = SpyTrainer(data_collator=pad_collate, **kwargs)
    trainer.seen = []
    return trainer


def complexity_vectors(model: torch.nn.Module, data: list[dict[str, Any]]) -> torch.Tensor:
    """`(len(data), num_moe_layers)`: each sample's per-layer two-expert fractions, from a forward of its own (no
    padding, nothing shared with a training batch): the independent reference for the curriculum tests."""
    model.eval()
    with torch.no_grad():
        vectors = []
        for sample in data:
            model(**pad_collate([sample]))
            vectors.append(adamoe.routing_stats(model).per_sample[0])
    return torch.stack(vectors)
