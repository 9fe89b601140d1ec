"""Is the dense SmolLM2 baseline of the decoder rows credible? Figures before fine-tuning, on the cpu scale's own
evaluation data, beside the fine-tuned dense cells and simple anchors.

For each decoder task of the cpu scale (adamoe/reproduce/cpu_scale.py), the pretrained SmolLM2-135M-Instruct is
evaluated as it comes, dense, on the same held-out split, data settings and metric code as the Table 3 cells
(`adamoe.run.recipe.evaluate_checkpoint`), so the "after" figure of a dense cell reads against it. Anchors that
need no model, computed here on the same evaluation rows with the same scorers:
- summarisation: lead-3 (the article's first three sentences), ROUGE-1 with stemming, the classic extractive
  baseline (See et al. 2017 report 40.3 ROUGE-1 on the full CNN/DailyMail test set);
- translation: the German source copied as the English output, sacreBLEU (what no translation scores).

Usage (one torch thread, like the cells; writes <out>/decoder_baselines.json and prints a table):

    python scripts/decoder_baselines.py -o results/cpu/baselines [--tasks wikitext wmt19 cnn_dailymail soda]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from adamoe.reproduce.cpu_scale import CpuScale
from adamoe.run.recipe import evaluate_checkpoint
from adamoe.tasks import DataArgs

DECODER_TASKS = ("wikitext", "soda", "wmt19", "cnn_dailymail")


def pretrained_figures(task: str, kit_task, out: Path) -> dict:
    overlay = kit_task.overlay()
    data = DataArgs(**{k: v for k, v in overlay["data"].items() if k not in ("train_file", "validation_file")})
    training = {"per_device_eval_batch_size": overlay["training"]["per_device_eval_batch_size"]}
    wall, cpu = time.perf_counter(), time.process_time()
    metrics = evaluate_checkpoint(
        task,
        str(kit_task.model_dir),
        validation_file=str(kit_task.validation_file),
        data=data,
        training=training,
        output_dir=str(out / task),
    )
    return {"metrics": metrics, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def lead3_rouge1(validation_file: Path, max_rows: int | None) -> float:
    from rouge_score import rouge_scorer

    rows = [json.loads(line) for line in validation_file.read_text().splitlines() if line.strip()][:max_rows]
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    scores = []
    for row in rows:
        sentences = re.split(r"(?<=[.!?])\s+", row["article"].strip())
        scores.append(scorer.score(row["highlights"], " ".join(sentences[:3]))["rouge1"].fmeasure)
    return 100 * sum(scores) / len(scores)


def copy_source_bleu(validation_file: Path, max_rows: int | None) -> float:
    import sacrebleu

    rows = [json.loads(line)["translation"] for line in validation_file.read_text().splitlines() if line.strip()]
    rows = rows[:max_rows]
    return sacrebleu.corpus_bleu([r["de"] for r in rows], [[r["en"] for r in rows]]).score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output-dir", type=Path, required=True)
    parser.add_argument("--tasks", nargs="+", default=list(DECODER_TASKS), choices=DECODER_TASKS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    kit = CpuScale.locate(tasks=args.tasks).prepare(args.output_dir / "data", args.tasks)
    report = {}
    for task in args.tasks:
        figures = pretrained_figures(task, kit[task], args.output_dir)
        max_rows = kit[task].settings.data.get("max_eval_samples")
        if task == "cnn_dailymail":
            figures["lead3_rouge1"] = lead3_rouge1(kit[task].validation_file, max_rows)
        if task == "wmt19":
            figures["copy_source_bleu"] = copy_source_bleu(kit[task].validation_file, max_rows)
        report[task] = figures
        print(task, json.dumps(figures, indent=None, default=str), flush=True)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "decoder_baselines.json").write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
