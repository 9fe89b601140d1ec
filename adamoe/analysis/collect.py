"""Forward the validation examples through a patched model and tally its routing, per layer and per word.

After every forward (eval mode, no grad) each `MoEBlock.last_routing` holds the router's decision for the
batch: `probs` `(tokens, experts)`, `expert_index` `(tokens, 2)`, `second_active` `(tokens,)`, `token_mask`
and `batch_shape`. Over the tokens the mask keeps (the same tokens `adamoe.routing_stats` counts) this adds up

- per layer: routed tokens and two-expert tokens (paper Figure 2);
- per stack: a histogram of the normalised top-1 probability `p1 / (p1 + p2)` (paper Figure 1);
- per word occurrence (see `views.Words`): token-layer decisions and how many used two experts (Table 4).

Every masked position of every layer is credited to exactly one word occurrence, so summed over words the
counts equal the layer totals, which equal `routing_stats`'s for the same forwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..moe.block import MoEBlock, per_sample_grid
from ..moe.router import RoutingDecision
from ..patching.patch import moe_blocks
from .views import Example, Words, collate

CONFIDENCE_BINS = np.linspace(0.5, 1.0, 51)  # p1 / (p1 + p2) lies in [0.5, 1]
SAMPLED_TOKENS = 4  # like the paper's Figure 1: two near-ties and two confident tokens


@dataclass
class LayerCounts:
    name: str
    stack: str
    index: int  # position within its stack
    tokens: int = 0
    two_expert: int = 0

    @property
    def two_expert_fraction(self) -> float:
        return self.two_expert / max(self.tokens, 1)


@dataclass
class RoutingCollection:
    """The tallies of `collect_routing` (see the module docstring)."""

    layers: list[LayerCounts]
    histograms: dict[str, np.ndarray]
    occurrence_text: list[str]
    occurrence_special: np.ndarray
    occurrence_decisions: np.ndarray
    occurrence_two: np.ndarray
    occurrence_context: list[tuple[Words, str]]  # the Words and stack each occurrence lives in
    sampled_tokens: list[dict] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(layer.tokens for layer in self.layers)

    @property
    def two_expert(self) -> int:
        return sum(layer.two_expert for layer in self.layers)


def _batches(examples: list[Example], batch_size: int) -> Iterator[list[Example]]:
    for start in range(0, len(examples), batch_size):
        yield examples[start : start + batch_size]


def _grid(routing: RoutingDecision, values: torch.Tensor, seq_first: bool) -> torch.Tensor:
    return per_sample_grid(routing, values, seq_first)


@torch.no_grad()
def collect_routing(
    model: nn.Module, examples: list[Example], *, batch_size: int = 16, pad_token_id: int = 0
) -> RoutingCollection:
    """Run `examples` through `model` in eval mode, `batch_size` at a time, and tally the routing."""
    blocks = moe_blocks(model)
    if not blocks:
        raise ValueError("adamoe analyze needs an adamoe checkpoint: the model has no MoE blocks.")
    stack_index: dict[str, int] = {}
    layers = []
    for _, block in blocks:
        # The layer name that routing_stats and the training logs use, e.g. "bert.encoder.layer.0".
        layers.append(LayerCounts(name=block.layer_name, stack=block.stack, index=stack_index.get(block.stack, 0)))
        stack_index[block.stack] = stack_index.get(block.stack, 0) + 1
    # Global occurrence ids: one offset per distinct Words object (wikitext blocks share one).
    offsets: dict[int, int] = {}
    texts: list[str] = []
    special: list[bool] = []
    context: list[tuple[Words, str]] = []
    for example in examples:
        words = example.words
        if id(words) not in offsets:
            offsets[id(words)] = len(texts)
            texts += words.texts
            special += words.special
            context += [(words, stack) for stack in words.stack_of]
    decisions = np.zeros(len(texts), dtype=np.int64)
    two_counts = np.zeros(len(texts), dtype=np.int64)
    histograms = {layer.stack: np.zeros(len(CONFIDENCE_BINS) - 1, dtype=np.int64) for layer in layers}
    sampled: list[dict] = []
    device = next(model.parameters()).device
    model.eval()
    for batch_examples in _batches(examples, batch_size):
        for _, block in blocks:
            block.last_routing = None  # a block that does not run must not report the previous batch
        batch = {k: v.to(device) for k, v in collate(batch_examples, pad_token_id).items()}
        model(**batch)
        for layer, (_, block) in zip(layers, blocks, strict=True):
            routing = block.last_routing
            if routing is None:
                continue
            two = _grid(routing, routing.second_active, block.seq_first).cpu()  # (batch, seq)
            if routing.token_mask is None:
                mask = torch.ones_like(two)
            else:
                mask = _grid(routing, routing.token_mask, block.seq_first).cpu()
            top = routing.probs.gather(-1, routing.expert_index)  # (tokens, 2): p1 >= p2
            confidence = _grid(routing, top[:, 0] / top.sum(-1), block.seq_first).float().cpu()  # (batch, seq)
            layer.tokens += int(mask.sum())
            layer.two_expert += int((two & mask).sum())
            histograms[block.stack] += np.histogram(confidence[mask].numpy(), bins=CONFIDENCE_BINS)[0]
            for row, example in enumerate(batch_examples):
                positions = np.asarray(example.words.positions[block.stack]) + offsets[id(example.words)]
                length = len(positions)
                if bool(mask[row, length:].any()):
                    raise ValueError(f"{layer.name}: routed positions beyond the example's words; views are off.")
                kept = mask[row, :length].numpy()
                np.add.at(decisions, positions[kept], 1)
                np.add.at(two_counts, positions[kept], two[row, :length].numpy()[kept].astype(np.int64))
            if not sampled and layer.index == stack_index[layer.stack] // 2 and layer.stack == layers[0].stack:
                sampled = _sample_tokens(routing, block, mask, batch_examples, offsets, texts)
    return RoutingCollection(
        layers=layers,
        histograms=histograms,
        occurrence_text=texts,
        occurrence_special=np.asarray(special, dtype=bool),
        occurrence_decisions=decisions,
        occurrence_two=two_counts,
        occurrence_context=context,
        sampled_tokens=sampled,
    )


def _sample_tokens(
    routing: RoutingDecision,
    block: MoEBlock,
    mask: torch.Tensor,
    batch_examples: list[Example],
    offsets: dict[int, int],
    texts: list[str],
) -> list[dict]:
    """The two least and the two most confident real tokens of one batch and layer, with all their gate
    probabilities: the paper's Figure 1 shows such per-token distributions."""
    probs = routing.probs.float().cpu()  # (tokens, experts)
    batch, seq_len = routing.batch_shape
    # Flat token index of (row, position), in the block's own layout.
    flat = torch.arange(batch * seq_len)
    flat = flat.view(seq_len, batch).t() if block.seq_first else flat.view(batch, seq_len)  # (batch, seq)
    candidates = []
    for row, example in enumerate(batch_examples):
        for position, occurrence in enumerate(example.words.positions[block.stack]):
            if bool(mask[row, position]) and not example.words.special[occurrence]:
                token = int(flat[row, position])
                top2 = probs[token].topk(2).values
                candidates.append((float(top2[0] / top2.sum()), token, offsets[id(example.words)] + occurrence))
    candidates.sort()
    distinct: dict[str, tuple[float, int, int]] = {}
    for candidate in candidates:  # one token per word, so the panel shows different words
        distinct.setdefault(texts[candidate[2]], candidate)
    candidates = sorted(distinct.values())
    half = SAMPLED_TOKENS // 2
    chosen = candidates[:half] + candidates[-half:] if len(candidates) >= SAMPLED_TOKENS else candidates
    return [
        {"word": texts[occurrence], "layer": block.layer_name, "confidence": conf, "probs": probs[token].tolist()}
        for conf, token, occurrence in chosen
    ]
