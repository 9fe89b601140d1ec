"""adamoe: adaptive-gated mixture-of-experts fine-tuning for Hugging Face models.

The public names load on first use (PEP 562), as in transformers: `import adamoe` and the CLI's `--help` then need
neither torch nor transformers, and `adamoe.moeify` imports what it needs when it is first read.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the submodule that defines it.
_EXPORTS = {
    "CheckpointError": "modeling",
    "DenseFFN": "architectures",
    "FFNSpec": "architectures",
    "FFN_SPECS": "architectures",
    "LayerRoutingStats": "stats",
    "MoEBlock": "layer",
    "MoEConfig": "config",
    "MoEConfigError": "config",
    "NATIVE_MOE_SPECS": "native",
    "NativeMoE": "native",
    "NativeMoESpec": "native",
    "RouterNumericsError": "router",
    "RoutingDecision": "router",
    "RoutingStats": "stats",
    "UnsupportedArchitectureError": "patching",
    "balance_loss": "stats",
    "check_patched_consistently": "modeling",
    "from_pretrained": "modeling",
    "is_moe_model": "patching",
    "moe_blocks": "patching",
    "moe_config_of": "modeling",
    "moeify": "patching",
    "per_sample_complexity": "stats",
    "per_sample_two_expert_fractions": "stats",
    "register_ffn_spec": "architectures",
    "register_native_moe_spec": "native",
    "routing_stats": "stats",
    "set_routing": "patching",
    "upcycled_parameter_count": "patching",
}

__all__ = [
    "__version__",
    "CheckpointError",
    "DenseFFN",
    "FFNSpec",
    "FFN_SPECS",
    "LayerRoutingStats",
    "MoEBlock",
    "MoEConfig",
    "MoEConfigError",
    "NATIVE_MOE_SPECS",
    "NativeMoE",
    "NativeMoESpec",
    "RouterNumericsError",
    "RoutingDecision",
    "RoutingStats",
    "UnsupportedArchitectureError",
    "balance_loss",
    "check_patched_consistently",
    "from_pretrained",
    "is_moe_model",
    "moe_blocks",
    "moe_config_of",
    "moeify",
    "per_sample_complexity",
    "per_sample_two_expert_fractions",
    "register_ffn_spec",
    "register_native_moe_spec",
    "routing_stats",
    "set_routing",
    "upcycled_parameter_count",
]

if TYPE_CHECKING:
    from .architectures import FFN_SPECS, DenseFFN, FFNSpec, register_ffn_spec
    from .config import MoEConfig, MoEConfigError
    from .layer import MoEBlock
    from .modeling import CheckpointError, check_patched_consistently, from_pretrained, moe_config_of
    from .native import NATIVE_MOE_SPECS, NativeMoE, NativeMoESpec, register_native_moe_spec
    from .patching import (
        UnsupportedArchitectureError,
        is_moe_model,
        moe_blocks,
        moeify,
        set_routing,
        upcycled_parameter_count,
    )
    from .router import RouterNumericsError, RoutingDecision
    from .stats import (
        LayerRoutingStats,
        RoutingStats,
        balance_loss,
        per_sample_complexity,
        per_sample_two_expert_fractions,
        routing_stats,
    )


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'adamoe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later reads skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
