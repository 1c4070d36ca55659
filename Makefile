# assetd: `make demo` and `make test` are all a new machine needs (Python 3.11+).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check
# torch is pinned by constraints.txt so no dependency upgrades it (see README, "Installing").
TORCH  ?= torch==2.13.0

.PHONY: demo test bench bench-gpu install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -c constraints.txt -e '.[test]'
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(BIN)/assetd demo demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed-test
	$(BIN)/python bench/run.py

bench-gpu: $(VENV)/.installed-test
	$(BIN)/python bench/gpu.py --markdown .bench/gpu.md
	$(BIN)/python bench/run.py --splice gpu .bench/gpu.md

clean:
	rm -rf $(VENV) demo .pytest_cache .bench
