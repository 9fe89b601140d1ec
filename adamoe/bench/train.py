"""The benchmark's `train` section: one full training step (forward, loss + balance loss, backward, AdamW) of a
BERT-base- and a GPT-2-medium-shaped model built from configs with random weights: dense, top-1, top-2 and
adaptive with an exact forced share of two-expert tokens (`force_two_expert_fraction`). See `adamoe.bench`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..moe.config import MoEConfig
from ..moe.router import combine_weights
from ..moe.stats import balance_loss, routing_stats
from ..patching.patch import moe_blocks, moeify, set_routing
from .config import BenchConfig, Shape
from .harness import Case, measure


def build_model(shape: Shape, num_layers: int) -> nn.Module:
    """A randomly initialised model of `shape` with `num_layers` layers, dropout as in the released configs."""
    return MODEL_BUILDERS[shape.model_type](shape, num_layers)


def _bert_classifier(shape: Shape, num_layers: int) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    hf = BertConfig(
        hidden_size=shape.hidden_size,
        intermediate_size=shape.ffn_size,
        num_hidden_layers=num_layers,
        num_attention_heads=shape.num_heads,
        vocab_size=shape.vocab_size,
        max_position_embeddings=max(512, shape.seq_len),
        num_labels=2,
    )
    return BertForSequenceClassification(hf)


def _gpt2_lm(shape: Shape, num_layers: int) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2Config(
        n_embd=shape.hidden_size,
        n_inner=shape.ffn_size,
        n_layer=num_layers,
        n_head=shape.num_heads,
        vocab_size=shape.vocab_size,
        n_positions=max(1024, shape.seq_len),
        bos_token_id=shape.vocab_size - 1,  # GPT-2's <|endoftext|> is the last token
        eos_token_id=shape.vocab_size - 1,
    )
    return GPT2LMHeadModel(hf)


# How each `Shape.model_type` becomes a model for the training-step section.
MODEL_BUILDERS = {"bert": _bert_classifier, "gpt2": _gpt2_lm}


def force_two_expert_fraction(model: nn.Module, fraction: float, seed: int) -> list:
    """Make every adaptive router of `model` send exactly `round(fraction * tokens)` random tokens to two experts.

    The experts chosen and the probabilities stay the router's own; only which tokens use their second
    choice is pinned, and the combine weights are recomputed for it. Routers whose config says top1 or
    top2 are left alone. Returns the hook handles.
    """
    masks: dict[tuple[int, torch.device], torch.Tensor] = {}

    def hook(router, args, decision):
        if router.config.gating != "adaptive":
            return decision
        n, device = decision.active.shape[0], decision.active.device
        if (n, device) not in masks:
            g = torch.Generator().manual_seed(seed)
            two = torch.zeros(n, dtype=torch.bool)
            two[torch.randperm(n, generator=g)[: round(fraction * n)]] = True
            masks[n, device] = two.to(device)
        active = torch.zeros_like(decision.active)  # (tokens, k_max): the first choice, and the second where pinned
        active[:, 0], active[:, 1] = True, masks[n, device]
        decision.active = active
        decision.combine_weights = combine_weights(
            decision.probs, decision.expert_index, active, combine=router.config.combine
        )
        return decision

    return [block.router.register_forward_hook(hook) for _, block in moe_blocks(model)]


def bench_train(shape: Shape, config: BenchConfig, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Training steps of the dense model and of one MoE model switched between top1, top2 and adaptive.

    The three MoE variants share one model (the routers read the gating rule from their config at
    every forward), so they have the same weights and take turns in the timing rounds like the layer cases.
    """
    layers = config.train_layers or shape.num_layers
    seq_len = min(shape.seq_len, config.train_tokens)
    batch = max(1, config.train_tokens // seq_len)
    g = torch.Generator().manual_seed(config.seed)
    input_ids = torch.randint(shape.vocab_size, (batch, seq_len), generator=g).to(device)
    labels = input_ids if shape.causal_lm else torch.randint(2, (batch,), generator=g).to(device)
    variants = ("dense", "top1", "top2", "adaptive")
    base = {"shape": shape.name, "layers": layers, "batch": batch, "seq_len": seq_len, "tokens": batch * seq_len}
    rows = [base | {"variant": v} for v in variants]
    try:
        inputs = {"input_ids": input_ids, "labels": labels}
        dense, moe = (_train_model(shape, layers, is_moe, config, device, dtype, inputs) for is_moe in (False, True))
        blocks = [block for _, block in moe_blocks(moe.model)]
        force_two_expert_fraction(moe.model, config.train_fraction, config.seed)
        last_routing = {}

        def case(model: _TrainModel, gating: str | None) -> Case:
            def run():
                if gating is not None:
                    set_routing(moe.model, gating=gating)
                model.step()
                if gating is not None:  # kept to compute this variant's routing statistics afterwards
                    last_routing[gating] = [block.last_routing for block in blocks]

            return Case(run, model.reset)

        cases = {v: case(dense if v == "dense" else moe, None if v == "dense" else v) for v in variants}
        measured = measure(cases, config, device)
        for row in rows:
            row |= measured[row["variant"]]
            model = dense if row["variant"] == "dense" else moe
            row["params_m"] = sum(p.numel() for p in model.model.parameters()) / 1e6
            row["two_expert_fraction"] = None
            if row["variant"] != "dense":
                for block, routing in zip(blocks, last_routing[row["variant"]], strict=True):
                    block.last_routing = routing
                row["two_expert_fraction"] = routing_stats(moe.model).two_expert_fraction
    except torch.OutOfMemoryError:  # a full-depth 16-expert GPT-2-medium needs most of an 80 GB GPU
        for row in rows:
            row |= {"error": "out of memory", "time_ms": None, "peak_mib": None, "two_expert_fraction": None}
    finally:
        dense = moe = cases = blocks = last_routing = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    by_variant = {row["variant"]: row["time_ms"] for row in rows}
    for row in rows:
        row["ratio_to_dense"] = _ratio(row["time_ms"], by_variant["dense"])
        row["ratio_to_top2"] = _ratio(row["time_ms"], by_variant["top2"]) if row["variant"] != "dense" else None
    return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


@dataclass
class _TrainModel:
    """A model, its input batch and its fused AdamW, as one training step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    inputs: dict[str, torch.Tensor]
    moe: bool

    def reset(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.reset()
        loss = self.model(**self.inputs).loss
        if self.moe:
            loss = loss + balance_loss(self.model)
        loss.backward()
        self.optimizer.step()


def _train_model(shape, layers, moe, config, device, dtype, inputs) -> _TrainModel:
    torch.manual_seed(config.seed)
    with torch.device(device):  # build in place: a full-depth MoE GPT-2-medium has 3.4 B parameters
        model = build_model(shape, layers)
        if moe:
            e, dispatch = config.num_experts, config.dispatch
            moeify(model, MoEConfig(num_experts=e, gating="adaptive", expert_init="random", dispatch=dispatch))
    model.to(dtype).train()
    # Fused, as transformers' default `adamw_torch_fused`: the foreach version allocates temporaries the
    # size of all parameters every step, which on CPU costs page faults that swamp the MoE's own cost.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    return _TrainModel(model, optimizer, inputs, moe)


# ----------------------------------------------------------------------------------------------- report
