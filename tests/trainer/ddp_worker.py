"""One rank of the data-parallel test: `torchrun --nproc_per_node 2 ddp_worker.py RUN_CONFIG.json REPORT_DIR`.

Runs the unchanged `adamoe.run.recipe.finetune` on the run config, and writes `REPORT_DIR/rank{r}.json` with what
this rank saw: the sample indices of each training batch (and the curriculum epoch), its own routing counts, the
files it asked to write, a checksum of its final parameters and the results `finetune` returned.

On rank 1 every router's logit for the last expert is pushed to -1e4 (a bias no token overcomes), so that expert
receives no tokens there while rank 0 keeps using it: DDP must still reduce its (zero) gradient slice.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

import adamoe
import adamoe.run.recipe as recipes
from adamoe.moe.router import Router
from adamoe.trainer import AdaMoETrainerMixin

RANK = int(os.environ["RANK"])
report: dict[str, Any] = {"batches": [], "first": {}, "second": {}, "json_writes": [], "model_saves": []}


def _record(original: Any, calls: list[str]) -> Any:
    def wrapper(target: Any, *args: Any, **kwargs: Any) -> Any:
        # save_pretrained(self, directory) or write_json_atomically(path, payload)
        calls.append(str(args[0] if isinstance(target, PreTrainedModel) else target))
        return original(target, *args, **kwargs)

    return wrapper


def _last_expert_sums(model: torch.nn.Module) -> dict[str, float]:
    sums = {}
    for _, block in adamoe.moe_blocks(model):
        weights = (block.experts.w_in, block.experts.w_out)  # (E, d, f), (E, f, d)
        sums[block.layer_name] = sum(w[-1].detach().double().abs().sum().item() for w in weights)
    return sums


def _patch() -> None:
    compute_loss = AdaMoETrainerMixin.compute_loss
    train = AdaMoETrainerMixin.train

    def spy_compute_loss(self: Any, model: torch.nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        indices = inputs.get("sample_index")
        out = compute_loss(self, model, inputs, *args, **kwargs)
        if model.training:
            report["batches"].append([self.training_order.epoch, indices.tolist()])
            for layer in adamoe.routing_stats(self.accelerator.unwrap_model(model)).layers:
                for key, counts in (("first", layer.first_choice_counts), ("second", layer.second_choice_counts)):
                    # {layer name: tokens per expert} as first / active second choice
                    so_far = report[key].setdefault(layer.name, [0] * len(counts))
                    report[key][layer.name] = [a + b for a, b in zip(so_far, counts, strict=True)]
        return out

    def spy_train(self: Any, *args: Any, **kwargs: Any) -> Any:
        model = self.accelerator.unwrap_model(self.model)
        # Per MoE layer, the summed |weights| of the last expert (the one rank 1 starves), before and after.
        report["last_expert_before"] = _last_expert_sums(model)
        output = train(self, *args, **kwargs)
        report["last_expert_after"] = _last_expert_sums(model)
        report["param_checksum"] = sum(p.detach().double().abs().sum().item() for p in model.parameters())
        return output

    AdaMoETrainerMixin.compute_loss = spy_compute_loss
    AdaMoETrainerMixin.train = spy_train
    recipes.write_json_atomically = _record(recipes.write_json_atomically, report["json_writes"])
    PreTrainedModel.save_pretrained = _record(PreTrainedModel.save_pretrained, report["model_saves"])
    if RANK == 1:
        logits = Router.logits

        def starve_last_expert(self: Router, hidden_states: torch.Tensor) -> torch.Tensor:
            out = logits(self, hidden_states)  # (num_tokens, num_experts)
            return out - 1e4 * torch.nn.functional.one_hot(torch.tensor(out.shape[-1] - 1), out.shape[-1]).to(
                out.dtype
            )

        Router.logits = starve_last_expert


def main(run_config: str, report_dir: str) -> None:
    torch.set_num_threads(1)
    _patch()
    config = recipes.FinetuneConfig.from_dict(json.loads(Path(run_config).read_text()))
    results = recipes.finetune(config)
    report["results"] = {k: results[k] for k in ("metrics", "global_steps", "two_expert_fraction", "train_samples")}
    Path(report_dir, f"rank{RANK}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
