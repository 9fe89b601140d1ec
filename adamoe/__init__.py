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
    "CheckpointError": "patching.loading",
    "DenseFFN": "patching.dense",
    "ExportError": "patching.export",
    "FFNSpec": "patching.dense",
    "FFN_SPECS": "patching.dense",
    "LayerRoutingStats": "moe.stats",
    "LoraError": "patching.lora",
    "MoEBlock": "moe.block",
    "MoEConfig": "moe.config",
    "MoEConfigError": "moe.config",
    "NATIVE_MOE_SPECS": "patching.native",
    "NativeMoE": "patching.native",
    "NativeMoESpec": "patching.native",
    "RouterNumericsError": "moe.router",
    "RoutingDecision": "moe.router",
    "RoutingStateError": "moe.router",
    "RoutingStats": "moe.stats",
    "UnsupportedArchitectureError": "patching.patch",
    "balance_loss": "moe.stats",
    "check_patched_consistently": "patching.loading",
    "export_native": "patching.export",
    "from_pretrained": "patching.loading",
    "is_moe_model": "moe.block",
    "load_lora": "patching.lora",
    "lora_config": "patching.lora",
    "moe_blocks": "moe.block",
    "moe_config_of": "patching.patch",
    "moeify": "patching.patch",
    "per_sample_complexity": "moe.stats",
    "per_sample_two_expert_fractions": "moe.stats",
    "register_ffn_spec": "patching.dense",
    "register_native_moe_spec": "patching.native",
    "routing_stats": "moe.stats",
    "set_routing": "patching.patch",
    "update_routing_state": "moe.stats",
    "upcycled_parameter_count": "patching.patch",
}

__all__ = [
    "__version__",
    "CheckpointError",
    "DenseFFN",
    "ExportError",
    "FFNSpec",
    "FFN_SPECS",
    "LayerRoutingStats",
    "LoraError",
    "MoEBlock",
    "MoEConfig",
    "MoEConfigError",
    "NATIVE_MOE_SPECS",
    "NativeMoE",
    "NativeMoESpec",
    "RouterNumericsError",
    "RoutingDecision",
    "RoutingStateError",
    "RoutingStats",
    "UnsupportedArchitectureError",
    "balance_loss",
    "check_patched_consistently",
    "export_native",
    "from_pretrained",
    "is_moe_model",
    "load_lora",
    "lora_config",
    "moe_blocks",
    "moe_config_of",
    "moeify",
    "per_sample_complexity",
    "per_sample_two_expert_fractions",
    "register_ffn_spec",
    "register_native_moe_spec",
    "routing_stats",
    "set_routing",
    "update_routing_state",
    "upcycled_parameter_count",
]

if TYPE_CHECKING:
    from .moe.block import MoEBlock, is_moe_model, moe_blocks
    from .moe.config import MoEConfig, MoEConfigError
    from .moe.router import RouterNumericsError, RoutingDecision, RoutingStateError
    from .moe.stats import (
        LayerRoutingStats,
        RoutingStats,
        balance_loss,
        per_sample_complexity,
        per_sample_two_expert_fractions,
        routing_stats,
        update_routing_state,
    )
    from .patching.dense import FFN_SPECS, DenseFFN, FFNSpec, register_ffn_spec
    from .patching.export import ExportError, export_native
    from .patching.loading import CheckpointError, check_patched_consistently, from_pretrained
    from .patching.lora import LoraError, load_lora, lora_config
    from .patching.native import NATIVE_MOE_SPECS, NativeMoE, NativeMoESpec, register_native_moe_spec
    from .patching.patch import (
        UnsupportedArchitectureError,
        moe_config_of,
        moeify,
        set_routing,
        upcycled_parameter_count,
    )


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'adamoe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later reads skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
