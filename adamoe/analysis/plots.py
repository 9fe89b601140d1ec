"""The analysis figures: gate confidence (paper Figure 1), the per-layer two-expert share (paper Figure 2) and the
words that most often take two experts (the counts of the paper's Table 4)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .collect import CONFIDENCE_BINS, RoutingCollection  # noqa: E402
from .words import WordStats  # noqa: E402

STACK_COLORS = {"encoder": "tab:blue", "decoder": "tab:green"}


def plot_gate_confidence(collection: RoutingCollection, path: Path, *, threshold: float | None, title: str) -> Path:
    """Left: the distribution of p1 / (p1 + p2) over routed token-layers, per stack, with the two-expert cut
    (normalised threshold T: two experts iff p1 / (p1 + p2) <= (1 + T) / 2). Right: the full gate
    distribution of a few sampled tokens, as in the paper's Figure 1."""
    samples = collection.sampled_tokens
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3), gridspec_kw={"width_ratios": [1.15, 1]})
    ax = axes[0]
    centers = (CONFIDENCE_BINS[:-1] + CONFIDENCE_BINS[1:]) / 2
    width = CONFIDENCE_BINS[1] - CONFIDENCE_BINS[0]
    for stack, counts in collection.histograms.items():
        total = counts.sum()
        if total:
            ax.step(
                centers, counts / total / width, where="mid", color=STACK_COLORS.get(stack), label=f"{stack} layers"
            )
    if threshold is not None:
        cut = (1 + threshold) / 2
        ax.axvline(cut, color="tab:red", linestyle="--", label=f"two experts left of here (T={threshold})")
    ax.set_xlim(0.5, 1.0)
    ax.set_xlabel("normalised top-1 gate probability  p1 / (p1 + p2)")
    ax.set_ylabel("density over token-layers")
    ax.set_title("How sure is the router?")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    if samples:
        num_experts = len(samples[0]["probs"])
        offsets = np.linspace(-0.3, 0.3, len(samples))
        bar_width = 0.6 / max(len(samples), 1)
        for offset, sample in zip(offsets, samples, strict=True):
            label = f"'{sample['word']}'  p1/(p1+p2)={sample['confidence']:.2f}"
            ax.bar(np.arange(num_experts) + offset, sample["probs"], width=bar_width, label=label)
        ax.set_xticks(range(num_experts))
        ax.set_xlabel("expert")
        ax.set_ylabel("gate probability")
        ax.set_title(f"Sampled tokens ({samples[0]['layer']})")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    else:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_layer_fractions(collection: RoutingCollection, path: Path, *, title: str) -> Path:
    """Two-expert share of the routed tokens of every MoE layer, one panel per stack (encoder, decoder)."""
    stacks = [s for s in ("encoder", "decoder") if any(layer.stack == s for layer in collection.layers)]
    fig, axes = plt.subplots(1, len(stacks), figsize=(5.5 * len(stacks), 3.8), squeeze=False)
    for ax, stack in zip(axes[0], stacks, strict=True):
        layers = [layer for layer in collection.layers if layer.stack == stack]
        fractions = [100 * layer.two_expert_fraction for layer in layers]
        ax.bar([layer.index for layer in layers], fractions, color=STACK_COLORS[stack])
        ax.set_xticks([layer.index for layer in layers])
        ax.set_xlabel(f"{stack} layer")
        ax.set_ylabel("tokens using two experts (%)")
        ax.set_ylim(0, max(100.0, max(fractions, default=0) * 1.1))
        ax.set_title(f"{stack} stack")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_top_words(words: list[WordStats], path: Path, *, title: str, limit: int = 20) -> Path:
    """Horizontal bars: two-expert decisions of the `limit` words with the most, each labelled with its rate."""
    shown = words[:limit][::-1]  # most at the top
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * max(len(shown), 4) + 1.4))
    if shown:
        bars = ax.barh([w.word for w in shown], [w.two_expert for w in shown], color="tab:purple")
        for bar, word in zip(bars, shown, strict=True):
            ax.annotate(
                f"{100 * word.two_expert_rate:.0f}% of {word.decisions}",
                (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
        ax.margins(x=0.2)
    ax.set_xlabel("two-expert decisions (token pieces x layers), label: share of the word's decisions")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
