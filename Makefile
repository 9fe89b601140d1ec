PYTHON ?= python3

.PHONY: install test lint format

# torch first, pinned to the CPU build this project is tested with, unless a torch in range is already
# installed (e.g. a CUDA build on a GPU machine): an unpinned torch would pull a multi-GB CUDA wheel.
install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==2.13.0"
	$(PYTHON) -m pip install -e ".[dev]"

test:
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff check --fix . && $(PYTHON) -m ruff format .
