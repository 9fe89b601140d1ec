PYTHON ?= python3

.PHONY: help install test lint format

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' Makefile | sed -E 's/:.*## /\t/'

# torch first, pinned to the CPU build this project is tested with, unless a torch in the project's range is
# already installed (e.g. a CUDA build on a GPU machine): an unpinned torch would pull a multi-GB CUDA wheel.
install:  ## install torch (CPU, unless one in range is there) and adamoe with its dev tools
	$(PYTHON) -c "import torch, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(not (2, 11) <= v < (2, 15))" 2>/dev/null || $(PYTHON) -m pip install "torch==2.13.0"
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## run the test suite
	$(PYTHON) -m pytest -q

lint:  ## ruff check and format check
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .

format:  ## ruff fix and format
	$(PYTHON) -m ruff check --fix . && $(PYTHON) -m ruff format .
