"""Print the upcycling-cost table of docs/design.md: parameters and bf16 size of upcycled decoder LLMs.

The models are built on the meta device from their published shapes (no download, no memory), and every
figure comes from `adamoe.upcycled_parameter_count`. Run: `python scripts/upcycled_sizes.py`.
"""

from __future__ import annotations

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import adamoe

# (name, model class, config): the shapes of the released checkpoints' config.json files.
MODELS = [
    (
        "Qwen2.5-0.5B",
        Qwen2ForCausalLM,
        Qwen2Config(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
    ),
    (
        "Llama-3.2-1B",
        LlamaForCausalLM,
        LlamaConfig(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            vocab_size=128256,
            tie_word_embeddings=True,
        ),
    ),
    (
        "Mistral-7B",
        MistralForCausalLM,
        MistralConfig(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=32000,
            tie_word_embeddings=False,
        ),
    ),
]
COLUMNS = [
    ("4 experts", adamoe.MoEConfig(num_experts=4)),
    ("8 experts", adamoe.MoEConfig(num_experts=8)),
    ("8 experts, every 2nd layer", adamoe.MoEConfig(num_experts=8, every_n_layers=2)),
    ("16 experts", adamoe.MoEConfig(num_experts=16)),
]


def cell(count: int) -> str:
    return f"{count / 1e9:.2f} B ({2 * count / 2**30:.1f} GiB)"  # bf16: 2 bytes per parameter


def main() -> None:
    print("| dense model | dense | " + " | ".join(name for name, _ in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for name, model_class, config in MODELS:
        with torch.device("meta"):
            model = model_class(config)
        dense = sum(p.numel() for p in model.parameters())
        cells = [cell(adamoe.upcycled_parameter_count(model, moe)) for _, moe in COLUMNS]
        print(f"| {name} | {dense / 1e9:.2f} B | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
