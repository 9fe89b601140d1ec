"""`analyze(checkpoint, task, data, output_dir)`: routing analysis of a trained checkpoint, as the paper's
Figures 1 and 2 and Table 4. Reads top to bottom.

```python
from adamoe.analysis import analyze
from adamoe.tasks import DataArgs

report = analyze("runs/sst2", "sst2", DataArgs(validation_file="dev.tsv"), "runs/sst2/analysis")
report.two_expert_fraction, report.outputs["markdown"]
```

Writes to `output_dir`: `analysis.md` (the report), `gate_confidence.png` (Figure 1), `two_expert_per_layer.png`
(Figure 2), `top_words.png` (the counts behind Table 4) and `analysis.json` (every number in the report, stamped
with versions, git commit and hardware).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from ..files import write_json_atomically
from ..patching.loading import load_model, moe_config_of
from ..run.config import run_data_args
from ..run.output_dir import check_report_dir, claim_in_run
from ..run.provenance import provenance
from ..tasks import DataArgs, get_task
from .collect import RoutingCollection, collect_routing
from .plots import plot_gate_confidence, plot_layer_fractions, plot_top_words
from .views import build_view
from .words import WordStats, top_words, totals, word_stats


@dataclass
class AnalysisReport:
    """What `analyze` found and wrote.

    Attributes:
        task: the task analysed.
        checkpoint: the checkpoint folder.
        num_tokens: routed token-layer decisions (non-padding tokens x MoE layers).
        two_expert_fraction: the share of them that used two experts.
        layers: per MoE layer `{"name", "stack", "index", "tokens", "two_expert", "two_expert_fraction"}`.
        words: the top words (`WordStats`), most two-expert decisions first.
        word_totals: `(decisions, two_expert)` summed over every word and special token; equals the layer totals.
        outputs: the files written (`markdown`, `json`, `gate_confidence`, `layers`, `words`).
    """

    task: str
    checkpoint: str
    num_tokens: int
    two_expert_fraction: float
    layers: list[dict[str, Any]]
    words: list[WordStats]
    word_totals: tuple[int, int]
    collection: RoutingCollection | None = None
    outputs: dict[str, Path] = field(default_factory=dict)


def checkpoint_data(checkpoint: str | Path, **overrides: Any) -> DataArgs:
    """The data settings `checkpoint` was trained with (`adamoe.run.config.run_data_args`), the training file
    left out, with the non-None `overrides` on top."""
    return run_data_args(checkpoint, train_file=None, **overrides)


# What a report writes into its folder (check_report_dir).
REPORT_FILES = ("analysis.md", "analysis.json", "gate_confidence.png", "two_expert_per_layer.png", "top_words.png")


def analyze(
    checkpoint: str | Path,
    task: str,
    data: DataArgs | None = None,
    output_dir: str | Path | None = None,
    *,
    batch_size: int = 16,
    top_k: int = 25,
    overwrite: bool = False,
) -> AnalysisReport:
    """Route the task's validation data through `checkpoint` and report how (see the module docstring).

    Args:
        checkpoint: an adamoe checkpoint folder with its tokenizer (what `adamoe finetune` writes).
        task: a key of `adamoe.tasks.TASKS`.
        data: where the validation data comes from (`validation_file`, `max_eval_samples`, lengths); None: what
            the checkpoint was trained with (`checkpoint_data`).
        output_dir: where the report goes; None: `checkpoint/analysis`.
        batch_size: examples per forward.
        top_k: words listed in the report.
        overwrite: replace an earlier report in `output_dir` (a folder holding anything else is always refused).
    """
    task_def = get_task(task)
    data = dataclasses.replace(data, train_file=None) if data is not None else checkpoint_data(checkpoint)
    out = Path(output_dir) if output_dir is not None else Path(checkpoint) / "analysis"
    out = check_report_dir(out, REPORT_FILES, overwrite=overwrite)  # before anything is loaded or written
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    model = load_model(task_def, str(checkpoint), None)
    moe = moe_config_of(model.config)
    rows = task_def.load_raw(data)["validation"]
    examples = build_view(task, rows, tokenizer, data, model.config)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collection = collect_routing(model, examples, batch_size=batch_size, pad_token_id=pad)

    threshold = (
        moe.threshold if moe is not None and moe.gating == "adaptive" and moe.threshold_on == "normalized" else None
    )
    layers = [
        {**dataclasses.asdict(layer), "two_expert_fraction": layer.two_expert_fraction} for layer in collection.layers
    ]
    report = AnalysisReport(
        task=task,
        checkpoint=str(checkpoint),
        num_tokens=collection.num_tokens,
        two_expert_fraction=collection.two_expert / max(collection.num_tokens, 1),
        layers=layers,
        words=top_words(collection, limit=top_k),
        word_totals=totals(word_stats(collection)),
        collection=collection,
    )
    title = f"{task} — {Path(checkpoint).name}"
    report.outputs["gate_confidence"] = plot_gate_confidence(
        collection, out / "gate_confidence.png", threshold=threshold, title=title
    )
    report.outputs["layers"] = plot_layer_fractions(collection, out / "two_expert_per_layer.png", title=title)
    report.outputs["words"] = plot_top_words(
        report.words, out / "top_words.png", title=f"{title}\nwords that most often take two experts"
    )
    report.outputs["markdown"] = out / "analysis.md"
    report.outputs["markdown"].write_text(render_markdown(report, moe.to_dict() if moe else None, len(examples)))
    report.outputs["json"] = out / "analysis.json"
    write_json_atomically(
        report.outputs["json"],
        {
            "task": task,
            "checkpoint": str(checkpoint),
            "moe": moe.to_dict() if moe else None,
            "examples": len(examples),
            "num_tokens": report.num_tokens,
            "two_expert_fraction": report.two_expert_fraction,
            "layers": layers,
            "word_totals": {"decisions": report.word_totals[0], "two_expert": report.word_totals[1]},
            "top_words": [{**dataclasses.asdict(w), "two_expert_rate": w.two_expert_rate} for w in report.words],
            "confidence_histograms": {k: v.tolist() for k, v in collection.histograms.items()},
            "sampled_tokens": collection.sampled_tokens,
            **provenance(),
        },
    )
    claim_in_run(out)
    return report


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: AnalysisReport, moe: dict[str, Any] | None, num_examples: int) -> str:
    gating = "—" if moe is None else f"{moe['gating']}, T = {moe['threshold']} ({moe['threshold_on']} gap)"
    lines = [
        f"# Routing analysis: {report.task}",
        "",
        f"Checkpoint `{report.checkpoint}`; gating {gating}; {num_examples} validation examples.",
        "",
        f"**{100 * report.two_expert_fraction:.1f}%** of {report.num_tokens} routed token-layer decisions "
        "(non-padding tokens x MoE layers) used two experts.",
        "",
        "## Gate confidence (paper Figure 1)",
        "",
        "![gate confidence](gate_confidence.png)",
        "",
        "## Two-expert share per layer (paper Figure 2)",
        "",
        "![two-expert share per layer](two_expert_per_layer.png)",
        "",
        "| layer | stack | tokens | two-expert | share |",
        "|---|---|---|---|---|",
    ]
    for layer in report.layers:
        lines.append(
            f"| `{layer['name']}` | {layer['stack']} | {layer['tokens']} | {layer['two_expert']} | "
            f"{100 * layer['two_expert_fraction']:.1f}% |"
        )
    lines += [
        "",
        "## Words that most often take two experts (paper Table 4)",
        "",
        "![top words](top_words.png)",
        "",
        "Counts are (token, layer) decisions summed over a word's sub-word pieces, occurrences and layers. In the "
        "examples the word is in **bold** and the other words that used two experts in most layers are in _italics_.",
        "",
        "| word | two-expert decisions | decisions | rate | occurrences | examples |",
        "|---|---|---|---|---|---|",
    ]
    for word in report.words:
        examples = "<br>".join(_escape(e) for e in word.examples)
        lines.append(
            f"| {_escape(word.word)} | {word.two_expert} | {word.decisions} | {100 * word.two_expert_rate:.1f}% | "
            f"{word.occurrences} | {examples} |"
        )
    decisions, two = report.word_totals
    lines += [
        "",
        f"Check: over all words and special tokens, {two} two-expert decisions out of {decisions}; the per-layer "
        f"totals give {sum(layer['two_expert'] for layer in report.layers)} out of {report.num_tokens}.",
    ]
    return "\n".join(lines) + "\n"
