# Two entry points for a fresh clone:  `make repro` (install + run the pipeline)
# and `make test` (install + run the whole test suite). Everything lives in .venv.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
# Stages run as `python stages/...`: put the venv first so dvc finds the right python.
export PATH := $(BIN):$(PATH)

.PHONY: install repro test test-fast clean

install: $(VENV)/.installed

# torch is pinned in pyproject.toml to the CPU build cached on our machines; see README for GPUs.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,onnx]"
	touch $@

repro: install
	$(BIN)/dvc repro

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) data/processed data/raw/synthetic data/split.csv results
