"""Router numerics in training: float32 routing under bf16 autocast, and NaN/inf logits stop the run with the
layer and the optimizer step in the message."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from trainer_toys import pad_collate, tiny_bert, toy_dataset
from transformers import TrainerCallback

import adamoe
from adamoe import MoEConfig
from adamoe.cli._errors import user_errors
from adamoe.moe.router import Router, RouterNumericsError
from adamoe.trainer import AdaMoETrainer, AdaMoETrainingArguments


def test_router_logits_are_exact_float32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    router = Router(32, MoEConfig(num_experts=4, threshold=0.1))
    x = torch.randn(256, 32)
    want = (x @ router.weight.t()).softmax(-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = router(x).probs
        blurred = torch.nn.functional.linear(x, router.weight).float().softmax(-1)  # what autocast would do
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert (blurred - want).abs().max() > 1e-4  # bf16 really would have changed the gate probabilities


def test_bf16_training_routes_in_float32(train_kwargs: dict[str, Any]) -> None:
    model = tiny_bert()
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    block = adamoe.moe_blocks(model)[0][1]
    block.register_forward_hook(lambda module, args, out: seen.append((out.dtype, module.last_routing.probs.dtype)))
    args = AdaMoETrainingArguments(max_steps=2, bf16=True, **train_kwargs)
    AdaMoETrainer(model=model, args=args, train_dataset=toy_dataset(8), data_collator=pad_collate).train()
    assert seen == [(torch.bfloat16, torch.float32)] * 2  # the experts ran in bf16, the router did not


class _BreakRouter(TrainerCallback):
    """After optimizer step `step`, make one router's weights NaN (as a diverging update would)."""

    def __init__(self, model: torch.nn.Module, step: int, layer: int) -> None:
        self.model, self.step, self.layer = model, step, layer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            with torch.no_grad():
                adamoe.moe_blocks(self.model)[self.layer][1].router.weight[0, 0] = float("nan")


@pytest.mark.parametrize("layer", [0, 1])
def test_nan_router_logits_stop_training_naming_layer_and_step(train_kwargs: dict[str, Any], layer: int) -> None:
    model = tiny_bert()
    assert adamoe.moe_blocks(model)[layer][1].layer_name == f"bert.encoder.layer.{layer}"
    args = AdaMoETrainingArguments(max_steps=6, **train_kwargs)
    trainer = AdaMoETrainer(model=model, args=args, train_dataset=toy_dataset(24), data_collator=pad_collate)
    trainer.add_callback(_BreakRouter(model, step=3, layer=layer))
    with pytest.raises(RouterNumericsError) as raised:
        trainer.train()
    message = str(raised.value)
    assert (
        f"MoE layer 'bert.encoder.layer.{layer}'" in message
        and "optimizer step 4" in message
        and "epoch 0.50" in message
    )
    assert trainer.state.global_step == 3  # no optimizer step was taken on the garbage
    assert isinstance(raised.value, user_errors())  # the CLI prints it as "Error: ..." with exit code 2
