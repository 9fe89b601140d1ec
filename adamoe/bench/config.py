"""What the benchmark (`adamoe bench`, `adamoe.bench.run_benchmark`) measures: its sections, shapes and config.

Kept apart from the measuring code, and free of torch, so that `adamoe bench --help` answers at once: its flags
are generated from `BenchConfig`'s fields (`adamoe/cli/bench.py`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

SECTIONS = ("layer", "train", "native")
DTYPES = ("float32", "bfloat16", "float16")


class BenchConfigError(ValueError):
    """A benchmark setting that cannot run; the message names the flag and what it accepts."""


# The speed targets (native: the worst shape), checked against the results of the device they name.
TARGETS = {
    "cpu": {"layer top1/top2": 0.65, "layer adaptive20/top2": 0.72, "native skip50/topk": 0.65},
    "cuda": {
        "layer max adamoe/floor": 1.25,
        "layer top1/top2": 0.63,
        "layer adaptive20/top2": 0.70,
        "train top1/dense": 1.15,
        "train adaptive/top2": 0.80,
    },
}


@dataclass(frozen=True)
class Shape:
    """A model shape: the FFN of one layer and the model it sits in for the training-step section."""

    name: str
    model_type: str  # a key of MODEL_BUILDERS: "bert" (sequence classification, as SST-2) or "gpt2" (causal LM)
    causal_lm: bool  # the training step predicts the next token (labels = inputs) rather than a class
    hidden_size: int
    ffn_size: int
    num_layers: int
    num_heads: int
    vocab_size: int
    seq_len: int


SHAPES = {
    "bert-base": Shape("bert-base", "bert", False, 768, 3072, 12, 12, 30522, 128),
    "gpt2-medium": Shape("gpt2-medium", "gpt2", True, 1024, 4096, 24, 16, 50257, 512),
}
# `--quick`: the same code paths at toy size, for CI.
QUICK_SHAPES = {
    "bert-base": Shape("bert-base (quick)", "bert", False, 32, 64, 2, 2, 128, 16),
    "gpt2-medium": Shape("gpt2-medium (quick)", "gpt2", True, 32, 64, 2, 2, 128, 32),
}


@dataclass(frozen=True)
class NativeShape:
    """One MoE layer of a native MoE model: gated SiLU experts without biases, as Mixtral's and Qwen3-MoE's."""

    name: str
    hidden_size: int
    ffn_size: int
    num_experts: int
    top_k: int  # k_max: the model's own fixed number of experts per token
    cpu_divisor: int  # hidden and FFN are divided by this on CPU; experts and k_max stay


NATIVE_SHAPES = {
    "mixtral": NativeShape("mixtral", 4096, 14336, 8, 2, cpu_divisor=4),  # Mixtral-8x7B
    "qwen3-moe": NativeShape("qwen3-moe", 2048, 768, 128, 8, cpu_divisor=2),  # Qwen3-30B-A3B
}
# `--quick`: the same expert counts and k_max at toy widths, for CI.
QUICK_NATIVE_SHAPES = {
    "mixtral": NativeShape("mixtral (quick)", 32, 112, 8, 2, cpu_divisor=1),
    "qwen3-moe": NativeShape("qwen3-moe (quick)", 32, 12, 128, 8, cpu_divisor=1),
}


@dataclass
class BenchConfig:
    """What `run_benchmark` measures. `None` fields take a per-device default (see `resolved`)."""

    device: str = field(default="cpu", metadata={"help": "'cpu' or 'cuda' (or 'cuda:N')."})
    dtype: str | None = field(default=None, metadata={"help": "float32/bfloat16/float16; bf16 on CUDA, fp32 on CPU."})
    tokens: int | None = field(default=None, metadata={"help": "Tokens per layer call (16384 on CUDA, 2048 CPU)."})
    train_tokens: int | None = field(default=None, metadata={"help": "Tokens per training step (16384 / 1024)."})
    repeats: int | None = field(default=None, metadata={"help": "Timed repeats per case (median reported)."})
    warmup: int | None = field(default=None, metadata={"help": "Untimed runs per case first."})
    sections: tuple[str, ...] = field(default=SECTIONS, metadata={"help": "Any of 'layer', 'train', 'native'."})
    shapes: tuple[str, ...] = field(default=tuple(SHAPES), metadata={"help": "Names in SHAPES."})
    num_experts: int = field(default=16, metadata={"help": "Experts per MoE layer."})
    fractions: tuple[float, ...] = field(
        default=(0.0, 0.1, 0.2, 0.25, 0.5, 1.0),
        metadata={"help": "Forced two-expert shares of the layer section; 0 (top-1) and 1 (top-2) always run."},
    )
    native_shapes: tuple[str, ...] = field(
        default=("mixtral", "qwen3-moe"), metadata={"help": "Names in NATIVE_SHAPES."}
    )
    skip_fractions: tuple[float, ...] = field(
        default=(0.0, 0.25, 0.5, 0.75),
        metadata={"help": "Forced shares of the optional (k_max - 1) slots skipped, native section; 0 always runs."},
    )
    native_divisor: int | None = field(
        default=None, metadata={"help": "Divide native widths by this (CPU: Mixtral 4, Qwen3-MoE 2; CUDA: 1)."}
    )
    train_fraction: float = field(default=0.2, metadata={"help": "Forced two-expert share of the adaptive step."})
    train_layers: int | None = field(
        default=None, metadata={"help": "Layers of the training-step models; full depth on CUDA, 2 on CPU."}
    )
    mixtral_loop: tuple[str, ...] | None = field(
        default=None, metadata={"help": "Routings also run as Mixtral's loop (top1 top2 on CUDA, top2 on CPU)."}
    )
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)."})
    dispatch: str = field(default="auto", metadata={"help": "MoEConfig.dispatch: auto, grouped_mm or loop."})
    memory: bool = field(default=True, metadata={"help": "Also measure peak memory (one more run per case)."})
    quick: bool = field(default=False, metadata={"help": "Toy shapes, few tokens, one repeat: a smoke test."})
    seed: int = field(default=0, metadata={"help": "Seed of the weights, inputs and forced routings."})
    output_dir: str | None = field(default="bench-results", metadata={"help": "Where bench.json/bench.md go."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an earlier bench.json/bench.md in --out."})

    def resolved(self) -> BenchConfig:
        """A copy with every per-device default filled in, checked.

        Raises:
            BenchConfigError: a value the benchmark cannot run with (the message names the flag).
        """
        import torch

        try:
            cuda = torch.device(self.device).type == "cuda"
        except RuntimeError as err:
            raise BenchConfigError(f"--device {self.device!r} is not a device: {err}") from err
        if cuda and not torch.cuda.is_available():
            raise BenchConfigError(
                f"--device {self.device} needs a GPU and a CUDA build of torch; this torch ({torch.__version__}) sees "
                "none. Use --device cpu here."
            )
        if self.dtype is not None and self.dtype not in DTYPES:
            raise BenchConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}.")
        values = dataclasses.asdict(self)
        defaults = {
            "dtype": "bfloat16" if cuda else "float32",
            "repeats": 10 if cuda else 3,
            "warmup": 3 if cuda else 1,
        }
        defaults |= {"tokens": 16384, "train_tokens": 16384} if cuda else {"tokens": 2048, "train_tokens": 1024}
        defaults |= {"train_layers": None if cuda else 2}  # None: the shape's full depth
        defaults |= {"mixtral_loop": ("top1", "top2") if cuda else ("top2",)}  # it takes seconds on CPU
        if self.quick:
            # One thread: toy GEMMs gain nothing from two, and on a loaded machine every parallel region
            # can wait a scheduler slice for its second thread.
            defaults |= {"tokens": 256, "train_tokens": 256, "train_layers": 2, "threads": 1}
            defaults |= {"repeats": 1, "warmup": 1}
        for name, value in defaults.items():
            if values[name] is None:
                values[name] = value
        values["fractions"] = tuple(sorted({0.0, 1.0, *map(float, values["fractions"])}))
        values["skip_fractions"] = tuple(sorted({0.0, *map(float, values["skip_fractions"])}))
        for name in ("fractions", "skip_fractions"):
            if not all(0 <= f <= 1 for f in values[name]):
                flag = "--" + name.replace("_", "-")
                raise BenchConfigError(f"{flag} must lie in [0, 1], got {values[name]}.")
        unknown = set(values["sections"]) - set(SECTIONS)
        if (
            unknown
            or not set(values["shapes"]) <= set(SHAPES)
            or not set(values["native_shapes"]) <= set(NATIVE_SHAPES)
        ):
            raise BenchConfigError(
                f"--sections must be in {SECTIONS}, --shapes in {tuple(SHAPES)}, --native-shapes in "
                f"{tuple(NATIVE_SHAPES)}."
            )
        return BenchConfig(**values)

    def shape(self, name: str) -> Shape:
        return (QUICK_SHAPES if self.quick else SHAPES)[name]
