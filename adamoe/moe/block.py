"""`MoEBlock`: router + experts + combine, the module that stands where a dense FFN stood."""

from __future__ import annotations

import torch
from torch import nn

from .config import MoEConfig
from .dispatch import sort_pairs
from .experts import Experts
from .router import Router, RouterNumericsError, RoutingDecision


class MoEBlock(nn.Module):
    """A mixture-of-experts FFN with adaptive gating, a drop-in for one dense FFN.

    It maps `(..., hidden)` to `(..., hidden)` like the FFN it replaces and keeps the routing decision
    of its last forward in `last_routing`, which the balance loss, the routing statistics and the
    curriculum read. The token mask of the current batch (False on padding) is handed to it in
    `token_mask` by a forward pre-hook that `adamoe.moeify` puts on the model.

    Args:
        router: decides which experts each token uses.
        experts: the stacked expert FFNs.
        config: the `MoEConfig` shared by all blocks of a model.
        layer_name: the module name of the layer it sits in (used in errors and statistics).
        stack: "encoder" or "decoder", which padding mask applies.
        seq_first: the model passes `(seq_len, batch, hidden)` (FSMT) instead of `(batch, seq_len, hidden)`.
        output_dropout: dropout after the combine, where the replaced FFN module applied one itself (GPT-2).
        shared_expert: a module every token goes through, its output added to the mixture (Qwen2-MoE's
            sigmoid-gated shared expert, `adamoe.patching.native.SharedExpert`); None for none.
    """

    def __init__(
        self,
        *,
        router: Router,
        experts: Experts,
        config: MoEConfig,
        layer_name: str = "",
        stack: str = "encoder",
        seq_first: bool = False,
        output_dropout: float = 0.0,
        shared_expert: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.router = router
        self.experts = experts
        self.shared_expert = shared_expert
        self.config = config.resolve()
        self.layer_name = layer_name
        self.stack = stack
        self.seq_first = seq_first
        self.output_dropout = nn.Dropout(output_dropout)
        self.token_mask: torch.Tensor | None = None
        self.last_routing: RoutingDecision | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        tokens = hidden_states.reshape(-1, shape[-1])  # (num_tokens, hidden)
        token_mask, batch_shape = self._token_layout(shape)
        routing = self.router(tokens, token_mask)
        # The finiteness check rides in the dispatch's one read-back instead of costing a sync of its own.
        layout = sort_pairs(
            routing.expert_index,
            routing.combine_weights,
            routing.active,
            self.experts.num_experts,
            check=torch.isfinite(routing.probs).all(),
        )
        if not layout.check_passed:
            raise RouterNumericsError(
                f"The router of MoE layer '{self.layer_name}' produced NaN or infinite gate logits. The "
                "hidden states reaching it are already broken: lower the learning rate, use bf16 rather than "
                "fp16, or resume from an earlier checkpoint."
            )
        routing.batch_shape = batch_shape
        self.last_routing = routing
        mixed = self.experts(tokens, layout=layout)  # (num_tokens, hidden)
        if self.shared_expert is not None:
            mixed = mixed + self.shared_expert(tokens)
        return self.output_dropout(mixed.view(shape))

    def _token_layout(self, shape: torch.Size) -> tuple[torch.Tensor | None, tuple[int, int] | None]:
        """The flat token mask and the `(batch, seq_len)` shape of this forward's tokens, if known."""
        if len(shape) != 3:
            return None, None
        batch_shape = (shape[1], shape[0]) if self.seq_first else (shape[0], shape[1])
        mask = self.token_mask
        # With a KV cache the mask covers past and current tokens while only the current ones pass
        # through here; such a step has no padding to skip, so no mask is the right answer.
        if mask is None or tuple(mask.shape) != batch_shape:
            return None, batch_shape
        mask = mask.bool()
        return (mask.t() if self.seq_first else mask).reshape(-1), batch_shape

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"layer={self.layer_name!r}, stack={self.stack}, gating={c.gating}, top_k={c.top_k}, "
            f"threshold={c.threshold}"
        )


def moe_blocks(model: nn.Module) -> list[tuple[str, MoEBlock]]:
    """`(module name, block)` for every MoE block of `model`, in model order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, MoEBlock)]


def is_moe_model(model: nn.Module) -> bool:
    """Whether `model` holds at least one MoE block."""
    return any(isinstance(module, MoEBlock) for module in model.modules())


def per_sample_grid(routing: RoutingDecision, values: torch.Tensor, seq_first: bool) -> torch.Tensor:
    """Reshape a flat per-token tensor of one forward to `(batch, seq_len)`."""
    batch, seq_len = routing.batch_shape
    if seq_first:
        return values.view(seq_len, batch).t()
    return values.view(batch, seq_len)
