"""One rank of the FSDP2 test: `torchrun --nproc_per_node 2 fsdp_worker.py RUN_CONFIG.json REPORT_DIR`.

Runs the unchanged `adamoe.run.recipe.finetune` on a run config whose `training:` section asks the Trainer for
FSDP2 (`fsdp: true` and an `fsdp_config`), and records what this rank held:

- `REPORT_DIR/rank{r}.json`: the local shard shape and the global shape of every MoE block's expert weights, the
  checksum of each local shard, the training batches this rank ran and the results `finetune` returned;
- `REPORT_DIR/rank{r}-step{N}.pt`: every parameter gathered from the shards (`DTensor.full_tensor()`, a
  collective that every rank makes in the same order) just before checkpoint N is saved, and `-final.pt` at the
  end of `train()`.

With a third argument `poison`, rank 1 writes a NaN into its own shard of the last expert before the first
checkpoint is saved; the report then holds the error each rank raised (rank 0's shard stays finite). With
`stock`, accelerate's gate stays as it is (what a user gets on CPU).

One thing differs from a GPU machine, and only here: accelerate turns the FSDP plugin on only for accelerator
devices (its `AcceleratorState` lists MULTI_GPU, MULTI_XPU, ...; on CPU the Trainer would silently train plain
DDP). `_allow_fsdp_on_cpu` lifts that one gate; from there on the Trainer's own FSDP2 path runs: accelerate's
`fully_shard` per `BertLayer`, the FULL_STATE_DICT model and optimizer saves, and their loading on resume.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor

import adamoe.run.recipe as recipes
from adamoe.trainer import AdaMoETrainerMixin, AtomicCheckpointMixin
from adamoe.trainer.checkpointing import NonFiniteWeightsError

RANK = int(os.environ["RANK"])
report: dict[str, Any] = {"batches": [], "experts": {}}


def _allow_fsdp_on_cpu() -> None:
    init = AcceleratorState.__init__

    def init_with_cpu_fsdp(self: AcceleratorState, *args: Any, fsdp_plugin: Any = None, **kwargs: Any) -> None:
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # What AcceleratorState does for the accelerator devices when a plugin is given.
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init_with_cpu_fsdp


def _gathered(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter in full: sharded ones are all-gathered (on every rank, in the same order)."""
    return {
        name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
        for name, p in model.named_parameters()
    }


def _record_shards(model: torch.nn.Module) -> None:
    for name, weight in model.named_parameters():
        if name.endswith((".experts.w_in", ".experts.w_out")):  # (E, d, f) / (E, f, d), sharded along E
            local = weight.to_local() if isinstance(weight, DTensor) else weight
            report["experts"][name] = {
                "dtensor": isinstance(weight, DTensor),
                "global_shape": list(weight.shape),
                "local_shape": list(local.shape),
                "local_sum": local.detach().double().sum().item(),
            }


def _patch(report_dir: Path, *, poison: bool) -> None:
    compute_loss = AdaMoETrainerMixin.compute_loss
    save_checkpoint = AtomicCheckpointMixin._save_checkpoint
    train = AdaMoETrainerMixin.train

    def spy_compute_loss(self: Any, model: torch.nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if model.training:
            report["batches"].append(inputs["sample_index"].tolist())
        return compute_loss(self, model, inputs, *args, **kwargs)

    def spy_save_checkpoint(self: Any, model: torch.nn.Module, trial: Any) -> None:
        if poison and RANK == 1:
            weight = next(p for name, p in self.model.named_parameters() if name.endswith(".experts.w_in"))
            with torch.no_grad():
                weight.to_local()[-1, 0, 0] = float("nan")  # this rank holds experts 2 and 3 of (4, d, f)
        torch.save(_gathered(self.model), report_dir / f"rank{RANK}-step{self.state.global_step}.pt")
        save_checkpoint(self, model, trial)

    def spy_train(self: Any, *args: Any, **kwargs: Any) -> Any:
        output = train(self, *args, **kwargs)
        report["fsdp_enabled"] = self.is_fsdp_enabled
        report["wrapped"] = type(self.model_wrapped).__name__
        _record_shards(self.model)
        torch.save(_gathered(self.model), report_dir / f"rank{RANK}-final.pt")
        return output

    AdaMoETrainerMixin.compute_loss = spy_compute_loss
    AtomicCheckpointMixin._save_checkpoint = spy_save_checkpoint
    AdaMoETrainerMixin.train = spy_train


def main(run_config: str, report_dir: str, mode: str = "") -> None:
    torch.set_num_threads(1)
    if mode != "stock":
        _allow_fsdp_on_cpu()
    _patch(Path(report_dir), poison=mode == "poison")
    config = recipes.FinetuneConfig.from_dict(json.loads(Path(run_config).read_text()))
    try:
        results = recipes.finetune(config)
    except NonFiniteWeightsError as err:
        report["error"] = str(err)
    else:
        report["results"] = {k: results[k] for k in ("metrics", "global_steps", "train_loss")}
    Path(report_dir, f"rank{RANK}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
