#!/usr/bin/env bash
# What a GPU session runs (docs/performance.md, "CUDA"): the CUDA tests, then the benchmark.
# OUT receives the test log and bench.md / bench.json. On a machine whose torch has CUDA, `make install` keeps
# that torch; the packages the GPU image lacks (datasets, evaluate, rouge-score, ...) must be installed first.
set -euo pipefail
OUT=${OUT:-bench-results/cuda}
mkdir -p "$OUT"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
python -m pytest -m gpu -v tests/ 2>&1 | tee "$OUT/pytest-gpu.log"
python -m adamoe.bench --device cuda --out "$OUT" "$@"
