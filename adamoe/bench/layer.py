"""The `layer` section: one `Experts` layer, forward + backward, with forced routing (top-1, top-2 and adaptive
with an exact share of two-expert tokens), against the floor (one dense FFN over as many rows as there are
token-expert pairs) and the expert loop of transformers' `MixtralExperts`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..moe.experts import Experts
from .config import BenchConfig, Shape
from .harness import backward_case, measure


def forced_routing(num_tokens: int, num_experts: int, fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """Routing with every expert equally loaded and exactly `round(fraction * num_tokens)` two-expert tokens."""
    g = torch.Generator().manual_seed(seed)
    first = (torch.arange(num_tokens) % num_experts)[torch.randperm(num_tokens, generator=g)]  # (num_tokens,)
    second = (first + 1 + torch.randint(num_experts - 1, (num_tokens,), generator=g)) % num_experts
    two = torch.zeros(num_tokens, dtype=torch.bool)
    two[torch.randperm(num_tokens, generator=g)[: round(fraction * num_tokens)]] = True
    p = torch.rand(num_tokens, 2, generator=g).sort(dim=-1, descending=True).values  # p1 >= p2
    weights = torch.where(two.unsqueeze(-1), p / p.sum(-1, keepdim=True), torch.tensor([1.0, 0.0]))
    active = torch.stack([torch.ones_like(two), two], dim=-1)  # (num_tokens, 2)
    return {"index": torch.stack([first, second], dim=-1), "weights": weights * active, "active": active}


def mixtral_loop(experts: Experts, x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor, active):
    """The expert loop of transformers' `MixtralExperts.forward`, on our expert weights, for comparison."""
    out = torch.zeros_like(x)
    e = experts.num_experts
    with torch.no_grad():  # an unused second choice points at the extra class `e`, as Mixtral's padding does
        mask = nn.functional.one_hot(torch.where(active, index, e), num_classes=e + 1).permute(2, 1, 0)
        hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
    for expert in hit:
        expert = expert[0]
        if expert == e:
            continue
        slot, token = torch.where(mask[expert])
        inner = experts.activation(x[token] @ experts.w_in[expert] + experts.b_in[expert])
        y = (inner @ experts.w_out[expert] + experts.b_out[expert]) * weights[token, slot, None]
        out.index_add_(0, token, y.to(out.dtype))
    return out


def case_name(fraction: float) -> tuple[str, str]:
    """(case, gating) of a forced two-expert share. The experts never see the gating rule, so top-1 *is*
    adaptive at 0% and top-2 adaptive at 100%: one measurement each."""
    if fraction == 0:
        return "top1 (adaptive 0%)", "top1"
    if fraction == 1:
        return "top2 (adaptive 100%)", "top2"
    return f"adaptive {fraction:.0%}", "adaptive"


def bench_layer(shape: Shape, config: BenchConfig, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Forward + backward of one `Experts` layer per forced routing, of the Mixtral loop, and of the floors."""
    torch.manual_seed(config.seed)
    n, h, f = config.tokens, shape.hidden_size, shape.ffn_size
    experts = Experts(
        num_experts=config.num_experts, hidden_size=h, ffn_size=f, activation=nn.GELU(), dispatch=config.dispatch
    ).to(device, dtype)
    dense = nn.Sequential(nn.Linear(h, f), nn.GELU(), nn.Linear(f, h)).to(device, dtype)
    x = torch.randn(n, h, device=device, dtype=dtype, requires_grad=True)
    upstream = torch.randn(n, h, device=device, dtype=dtype)

    rows, cases = [], {}
    for fraction in config.fractions:
        name, gating = case_name(fraction)
        r = {k: v.to(device) for k, v in forced_routing(n, config.num_experts, fraction, config.seed).items()}
        r["weights"] = r["weights"].to(dtype)
        row = {"case": name, "method": "adamoe", "gating": gating, "forced_two_expert_fraction": fraction}
        row |= {"pairs": int(r["active"].sum()), "two_expert_fraction": float(r["active"][:, 1].float().mean())}
        rows.append(row)
        cases[name] = backward_case(
            experts, x, upstream, lambda r=r: experts(x, r["index"], r["weights"], r["active"])
        )
        if gating in config.mixtral_loop:
            rows.append(row | {"case": f"{gating} mixtral-loop", "method": "mixtral-loop"})
            cases[f"{gating} mixtral-loop"] = backward_case(
                experts, x, upstream, lambda r=r: mixtral_loop(experts, x, r["index"], r["weights"], r["active"])
            )
    for pairs in sorted({row["pairs"] for row in rows}):
        floor_x = torch.randn(pairs, h, device=device, dtype=dtype, requires_grad=True)
        floor_up = torch.randn(pairs, h, device=device, dtype=dtype)
        cases[f"floor {pairs}"] = backward_case(dense, floor_x, floor_up, lambda fx=floor_x: dense(fx))
        rows.append({"case": f"floor {pairs}", "method": "floor", "gating": None, "pairs": pairs})

    measured = measure(cases, config, device)
    floor = {row["pairs"]: measured[row["case"]]["time_ms"] for row in rows if row["method"] == "floor"}
    top2 = next(measured[row["case"]]["time_ms"] for row in rows if row["gating"] == "top2")
    for row in rows:
        row |= {"shape": shape.name, "hidden": h, "ffn": shape.ffn_size, "tokens": n, "experts": config.num_experts}
        row |= measured[row["case"]]
        row["ratio_to_floor"] = row["time_ms"] / floor[row["pairs"]]
        row["ratio_to_top2"] = row["time_ms"] / top2 if row["method"] == "adamoe" else None
    return rows
