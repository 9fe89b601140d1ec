"""The benchmark's `native` section: adaptive top-k on the layer shapes of native MoE LLMs.

Does skipping optional expert slots save time when a token may use up to k_max experts? One `Experts`
layer shaped like Mixtral's (hidden 4096, gated FFN 14336, SiLU, no biases, 8 experts, k_max 2) and one like
Qwen3-MoE's (hidden 2048, FFN 768, 128 experts, k_max 8), forward + backward, with forced routing: every
token keeps its first choice, and exactly `round(s * tokens * (k_max - 1))` of the optional slots 2..k_max
are skipped, for s = 0, 25, 50, 75%. The experts never see the gating rule, so s = 0 *is* fixed top-k on
the same dispatch. Each case is compared with fixed top-k and with the *floor*: one dense gated FFN of the
same shape run over as many rows as the layer has active token-expert pairs.

The routing is a `RoutingDecision` set directly, as the `layer` section does for k_max = 2: which slots a
token keeps is always a prefix of its top-k_max (the rule's gaps grow with i), so the forced part is only
how many optional slots each token keeps, drawn at random with an exact total.

On CPU the widths are divided (Mixtral by 4, Qwen3-MoE by 2; `--native-divisor` overrides both) while the
expert count, k_max and the hidden/FFN ratio stay: what decides whether a skipped slot saves time is the
rows each expert gets against the weights it must stream, which the divisor leaves alone at a given token
count. On CUDA the default is the real widths.

Run it alone: `python -m adamoe.bench --sections native --threads 1 --out bench-results/native`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..moe.experts import Experts
from ..moe.router import RoutingDecision, combine_weights
from .config import NATIVE_SHAPES, QUICK_NATIVE_SHAPES, BenchConfig, NativeShape
from .harness import backward_case, measure


def native_shape(config: BenchConfig, name: str) -> tuple[NativeShape, int]:
    """The shape as benchmarked, with its widths divided, and the divisor used."""
    if config.quick:
        return QUICK_NATIVE_SHAPES[name], 1
    shape = NATIVE_SHAPES[name]
    divisor = config.native_divisor or (1 if torch.device(config.device).type == "cuda" else shape.cpu_divisor)
    if shape.hidden_size % divisor or shape.ffn_size % divisor:
        raise ValueError(f"native_divisor {divisor} does not divide {name}'s widths.")
    hidden, ffn = shape.hidden_size // divisor, shape.ffn_size // divisor
    label = shape.name if divisor == 1 else f"{shape.name} (1/{divisor} width)"
    return NativeShape(label, hidden, ffn, shape.num_experts, shape.top_k, shape.cpu_divisor), divisor


def forced_skips(
    num_tokens: int, num_experts: int, top_k: int, skip_fraction: float, seed: int, *, combine: str = "normalized"
) -> RoutingDecision:
    """A routing to `top_k` experts per token with exactly `round(skip_fraction * num_tokens * (top_k - 1))`
    of the optional slots 2..top_k skipped.

    Every expert gets the same number of first choices; each token's further choices are distinct random
    other experts. The probabilities put the chosen experts first, in order, so `expert_index` is in
    decreasing gate probability as the router's is, and the combine weights are the router's own
    `combine_weights` over the kept slots (`"normalized"`: Mixtral's and Qwen3-MoE's renormalised top-k).
    """
    g = torch.Generator().manual_seed(seed)
    n, e, k = num_tokens, num_experts, top_k
    first = (torch.arange(n) % e)[torch.randperm(n, generator=g)]  # (n,)
    offsets = 1 + torch.rand(n, e - 1, generator=g).argsort(dim=-1)[:, : k - 1]  # (n, k - 1) distinct, in 1..e-1
    index = torch.cat([first[:, None], (first[:, None] + offsets) % e], dim=-1)  # (n, k)
    optional = n * (k - 1)
    keep = torch.zeros(optional, dtype=torch.bool)
    keep[torch.randperm(optional, generator=g)[: optional - round(skip_fraction * optional)]] = True
    kept = keep.view(n, k - 1).sum(-1)  # (n,) optional slots each token keeps
    active = torch.arange(k) <= kept[:, None]  # (n, k): the first choice, then a prefix of `kept` more
    top = 1 + torch.rand(n, k, generator=g).sort(dim=-1, descending=True).values  # (n, k) decreasing, > 1
    probs = torch.rand(n, e, generator=g).scatter(1, index, top)  # (n, e): the chosen k lead, in order
    probs = probs / probs.sum(-1, keepdim=True)
    weights = combine_weights(probs, index, active, combine=combine)  # (n, k), 0 where skipped
    return RoutingDecision(probs=probs, expert_index=index, active=active, combine_weights=weights)


class GatedFFN(nn.Module):
    """The dense floor: `down(silu(gate(x)) * up(x))`, the expert of Mixtral and Qwen3-MoE as one FFN, with gate
    and up as one projection, as the experts compute them."""

    def __init__(self, hidden_size: int, ffn_size: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(hidden_size, 2 * ffn_size, bias=False)
        self.down = nn.Linear(ffn_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(nn.functional.silu(gate) * up)


def case_name(skip_fraction: float, top_k: int) -> str:
    if skip_fraction == 0:
        return f"top-{top_k} (0% skipped)"
    if skip_fraction == 1:
        return "top-1 (100% skipped)"
    return f"{skip_fraction:.0%} skipped"


def bench_native_shape(name: str, config: BenchConfig, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Forward + backward of one native-shaped `Experts` layer per forced skip share, and of the floors."""
    shape, divisor = native_shape(config, name)
    torch.manual_seed(config.seed)
    n, h, f, e, k = config.tokens, shape.hidden_size, shape.ffn_size, shape.num_experts, shape.top_k
    experts = Experts(
        num_experts=e,
        hidden_size=h,
        ffn_size=f,
        activation=nn.SiLU(),
        gated=True,
        bias=False,
        dispatch=config.dispatch,
    ).to(device, dtype)
    dense = GatedFFN(h, f).to(device, dtype)
    x = torch.randn(n, h, device=device, dtype=dtype, requires_grad=True)
    upstream = torch.randn(n, h, device=device, dtype=dtype)

    rows, cases = [], {}
    for fraction in config.skip_fractions:
        decision = forced_skips(n, e, k, fraction, config.seed)
        index, active = decision.expert_index.to(device), decision.active.to(device)
        weights = decision.combine_weights.to(device, dtype)
        skipped = n * (k - 1) - int(decision.active[:, 1:].sum())
        row = {"case": case_name(fraction, k), "method": "adamoe", "skip_fraction": fraction}
        row |= {"pairs": int(decision.num_selected.sum()), "skipped_fraction": skipped / max(1, n * (k - 1))}
        rows.append(row)
        forward = lambda i=index, w=weights, a=active: experts(x, i, w, a)  # noqa: E731
        cases[row["case"]] = backward_case(experts, x, upstream, forward)
    for pairs in sorted({row["pairs"] for row in rows}):
        floor_x = torch.randn(pairs, h, device=device, dtype=dtype, requires_grad=True)
        floor_up = torch.randn(pairs, h, device=device, dtype=dtype)
        cases[f"floor {pairs}"] = backward_case(dense, floor_x, floor_up, lambda fx=floor_x: dense(fx))
        rows.append({"case": f"floor {pairs}", "method": "floor", "skip_fraction": None, "pairs": pairs})

    measured = measure(cases, config, device)
    floor = {row["pairs"]: measured[row["case"]]["time_ms"] for row in rows if row["method"] == "floor"}
    top_k = next(row for row in rows if row["skip_fraction"] == 0)
    top_k_ms, top_k_pairs = measured[top_k["case"]]["time_ms"], top_k["pairs"]
    for row in rows:
        row |= {"shape": shape.name, "hidden": h, "ffn": f, "experts": e, "top_k": k, "tokens": n}
        row |= {"width_divisor": divisor, "experts_per_token": row["pairs"] / n} | measured[row["case"]]
        row["ratio_to_floor"] = row["time_ms"] / floor[row["pairs"]]
        row["ratio_to_topk"] = row["time_ms"] / top_k_ms if row["method"] == "adamoe" else None
        row["pairs_to_topk"] = row["pairs"] / top_k_pairs  # the ratio a cost proportional to the pairs would give
    return rows


def bench_native(config: BenchConfig, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """The native section's rows, shape after shape (each shape's layer is freed before the next is built)."""
    rows = []
    for name in config.native_shapes:
        rows += bench_native_shape(name, config, device, dtype)
    return rows


def native_markdown(rows: list[dict], config: dict[str, Any]) -> list[str]:
    """The section's table, preceded by how each shape was scaled."""

    def fmt(value: Any, spec: str) -> str:
        return "" if value is None else format(value, spec)

    lines = ["", f"## Native MoE layer shapes, forward + backward, {config['tokens']} tokens", ""]
    for name in dict.fromkeys(r["shape"] for r in rows):
        r = next(r for r in rows if r["shape"] == name)
        scaled = f" (real widths divided by {r['width_divisor']})" if r["width_divisor"] > 1 else ""
        lines.append(
            f"- {name}: hidden {r['hidden']}, gated FFN {r['ffn']}{scaled}, {r['experts']} experts, k_max {r['top_k']}"
        )
    lines += ["", "| shape | case | pairs | pairs / top-k | ms | CPU ms | / floor | / top-k | peak MiB |"]
    lines += ["|---" * 9 + "|"]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['case']} | {r['pairs']} | {r['pairs_to_topk']:.2f} | {r['time_ms']:.1f} | "
            f"{fmt(r.get('cpu_ms'), '.1f')} | {r['ratio_to_floor']:.2f} | {fmt(r['ratio_to_topk'], '.2f')} | "
            f"{fmt(r.get('peak_mib'), '.0f')} |"
        )
    return lines
