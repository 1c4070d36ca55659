# assetd: `make demo` and `make test` are all a new machine needs (Python 3.11+).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check
# torch is pinned by constraints.txt so no dependency upgrades it (see README, "Installing").
TORCH  ?= torch==2.13.0

.PHONY: demo test bench bench-gpu reliability install install-test models browser clean

# The studio backend's subject prior (U²-Netp, 4.6 MB, sha256-checked) into the model cache
# (~/.cache/assetd, or $$XDG_CACHE_HOME/assetd): a no-op when it is there. Offline, the studio backend
# runs without it, so a failed pull is reported and the target goes on.
PULL_MODELS = $(BIN)/assetd models pull || echo "make: assetd models pull failed (offline?); the studio backend runs without its subject prior"

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

# The review page's browser tests drive Debian's chromium through Playwright (Playwright's own browser download
# needs a CDN). Installed here when missing and we are root; otherwise those tests skip, saying why (under CI=true
# they fail instead).
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "make: installing Debian's chromium for the browser tests"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
	  || { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null \
	       && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } \
	  || echo "make: could not install chromium; the browser tests will skip (fail under CI=true)"; \
	else echo "make: no $(CHROMIUM) (install Debian's chromium as root); the browser tests will skip"; fi

install-test: $(VENV)/.installed-test browser

models: $(VENV)/.installed
	$(PULL_MODELS)

demo: $(VENV)/.installed
	$(PULL_MODELS)
	$(BIN)/assetd demo demo

test: $(VENV)/.installed-test browser
	$(PULL_MODELS)
	$(BIN)/python -m pytest -q -n auto --dist worksteal  # one worker per core (pytest-xdist); idle workers take queued tests

bench: $(VENV)/.installed-test
	$(PULL_MODELS)
	$(BIN)/python bench/run.py

bench-gpu: $(VENV)/.installed-test
	$(BIN)/python bench/gpu.py --markdown .bench/gpu.md
	$(BIN)/python bench/run.py --splice gpu .bench/gpu.md

# The fault-injection suite at full size against the real `assetd run`; writes RELIABILITY.md (README, "Reliability").
reliability: $(VENV)/.installed-test
	$(BIN)/python bench/reliability.py --size full --markdown RELIABILITY.md

clean:
	rm -rf $(VENV) demo .pytest_cache .bench
