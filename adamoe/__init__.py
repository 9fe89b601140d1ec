"""adamoe: adaptive-gated mixture-of-experts fine-tuning for Hugging Face models."""

from .architectures import FFN_SPECS, DenseFFN, FFNSpec, register_ffn_spec
from .config import MoEConfig, MoEConfigError
from .layer import MoEBlock
from .modeling import CheckpointError, check_patched_consistently, from_pretrained, moe_config_of
from .native import NATIVE_MOE_SPECS, NativeMoE, NativeMoESpec, register_native_moe_spec
from .patching import UnsupportedArchitectureError, is_moe_model, moe_blocks, moeify, upcycled_parameter_count
from .router import RouterNumericsError, RoutingDecision
from .stats import LayerRoutingStats, RoutingStats, balance_loss, per_sample_two_expert_fractions, routing_stats

__version__ = "0.1.0"

__all__ = [
    "FFN_SPECS",
    "NATIVE_MOE_SPECS",
    "CheckpointError",
    "DenseFFN",
    "FFNSpec",
    "LayerRoutingStats",
    "MoEBlock",
    "MoEConfig",
    "MoEConfigError",
    "NativeMoE",
    "NativeMoESpec",
    "RouterNumericsError",
    "RoutingDecision",
    "RoutingStats",
    "UnsupportedArchitectureError",
    "__version__",
    "balance_loss",
    "check_patched_consistently",
    "from_pretrained",
    "is_moe_model",
    "moe_blocks",
    "moe_config_of",
    "moeify",
    "per_sample_two_expert_fractions",
    "register_ffn_spec",
    "register_native_moe_spec",
    "routing_stats",
    "upcycled_parameter_count",
]
