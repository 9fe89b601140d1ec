"""Option aliases and choices shared by the commands (the huggingface_hub CLI style)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..moe.config import MoEConfig
from ..tasks import TASKS

TaskName = Enum("TaskName", {name: name for name in TASKS}, type=str)


class Gating(str, Enum):
    adaptive = "adaptive"
    top1 = "top1"
    top2 = "top2"
    topk = "topk"
    dense = "dense"


class Rule(str, Enum):
    gap = "gap"
    top_p = "top_p"
    expert_threshold = "expert_threshold"


class ThresholdOn(str, Enum):
    normalized = "normalized"
    raw = "raw"


class Combine(str, Enum):
    normalized = "normalized"
    gate = "gate"


class ExpertInit(str, Enum):
    upcycle = "upcycle"
    random = "random"


TaskOpt = Annotated[TaskName, typer.Option("--task", "-t", help="Which task (see `adamoe tasks`).")]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Hub id or local model folder. [default: the task's, see `adamoe tasks`]"),
]
GatingOpt = Annotated[
    Gating | None,
    typer.Option(
        help="adaptive: top-1, plus experts up to --top-k while unsure; top1/top2/topk: fixed; dense: no MoE "
        "(baseline). [default: adaptive]"
    ),
]
TopKOpt = Annotated[
    int | None,
    typer.Option(
        "--top-k",
        help="k_max, the most experts a token may use. [default: a native MoE's own, else 2]",
        show_default=False,
    ),
]
ThresholdOpt = Annotated[
    float | None,
    typer.Option(
        help="The adaptive rule's parameter in [0, 1]: T on the gate-probability gap (gap rule), p (top_p). "
        "[default: 0.1]"
    ),
]
RuleOpt = Annotated[
    Rule | None,
    typer.Option(
        help="The adaptive rule: gap (the paper's), top_p (experts until their probability reaches --threshold) or "
        "expert_threshold (each expert's own moving-average threshold; needs --target-experts). [default: gap]"
    ),
]
TargetExpertsOpt = Annotated[
    float | None,
    typer.Option(
        "--target-experts",
        help="Steer the rule towards this mean number of experts per token, in [1, top_k], per layer (a PI "
        "controller on --threshold for gap and top_p; the thresholds' target for expert_threshold). [default: none]",
        show_default=False,
    ),
]
NullExpertsOpt = Annotated[
    int | None,
    typer.Option(
        "--num-null-experts",
        help="Null experts per MoE layer: slots that compute nothing and end a token's list (take until null). "
        "[default: 0]",
        show_default=False,
    ),
]
EntropyLossOpt = Annotated[
    float | None, typer.Option("--entropy-loss-coef", help="Router entropy-loss coefficient (top-p's; 0: off).")
]
NumExpertsOpt = Annotated[
    int | None, typer.Option("--num-experts", help="Experts per MoE layer. [default: a native MoE's own, else 16]")
]
ThresholdOnOpt = Annotated[ThresholdOn | None, typer.Option(help="Compare T with the normalised or the raw gap.")]
CombineOpt = Annotated[Combine | None, typer.Option(help="gate: weight by gate prob (paper); normalized: sum to 1.")]
ExpertInitOpt = Annotated[ExpertInit | None, typer.Option(help="upcycle: copy the FFN into every expert; random.")]
AuxLossOpt = Annotated[float | None, typer.Option("--aux-loss-coef", help="Balance-loss coefficient.")]
EveryNOpt = Annotated[int | None, typer.Option("--every-n-layers", help="Convert every n-th FFN only.")]
TrainFileOpt = Annotated[Path | None, typer.Option("--train-file", help="Local training file (offline).")]
ValidationFileOpt = Annotated[Path | None, typer.Option("--validation-file", help="Local validation file.")]
MaxEvalOpt = Annotated[int | None, typer.Option("--max-eval-samples", help="Use the first N validation rows.")]
BatchSizeOpt = Annotated[
    int | None, typer.Option("--batch-size", help="Per-device batch size. [default: the config's, else 8]")
]
OutputDirOpt = Annotated[
    Path | None, typer.Option("--output-dir", "-o", help="Where the run goes. [default: outputs/TASK-GATING]")
]


def moe_overrides(
    *,
    gating: Gating | None,
    threshold: float | None,
    num_experts: int | None,
    threshold_on: ThresholdOn | None = None,
    combine: Combine | None = None,
    expert_init: ExpertInit | None = None,
    aux_loss_coef: float | None = None,
    every_n_layers: int | None = None,
    top_k: int | None = None,
    rule: Rule | None = None,
    target_experts: float | None = None,
    entropy_loss_coef: float | None = None,
    num_null_experts: int | None = None,
) -> dict[str, Any]:
    """The MoE fields the user set on the command line (unset flags are None and left out)."""
    given = {
        "gating": gating.value if gating is not None and gating is not Gating.dense else None,
        "threshold": threshold,
        "rule": rule.value if rule else None,
        "target_experts": target_experts,
        "entropy_loss_coef": entropy_loss_coef,
        "num_experts": num_experts,
        "num_null_experts": num_null_experts,
        "top_k": top_k,
        "threshold_on": threshold_on.value if threshold_on else None,
        "combine": combine.value if combine else None,
        "expert_init": expert_init.value if expert_init else None,
        "aux_loss_coef": aux_loss_coef,
        "every_n_layers": every_n_layers,
    }
    return {k: v for k, v in given.items() if v is not None}


def moe_config(base: dict[str, Any] | None, overrides: dict[str, Any]) -> MoEConfig:
    return MoEConfig.from_dict({**(base or {}), **overrides})
