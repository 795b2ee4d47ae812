# Two entry points for a fresh clone:  `make repro` (install + run the pipeline)
# and `make test` (install + lint + run the whole test suite). Everything lives in .venv.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
# Stages run as `python stages/...`: put the venv first so dvc finds the right python.
export PATH := $(BIN):$(PATH)

.PHONY: install repro lint test test-fast clean

install: $(VENV)/.installed

# constraints.txt pins the exact builds our machines and CI use (torch: the CPU build cached
# there); pyproject.toml itself only states the ranges lungseg works with.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,onnx]"
	touch $@

repro: install
	$(BIN)/dvc repro

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) data/processed data/raw/synthetic data/split.csv results
