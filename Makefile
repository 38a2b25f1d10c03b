# hazardlens: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOST ?= 127.0.0.1
PORT ?= 8000
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup run test test-fast lint lint-code browser pdftools labelstudio screenshots openapi bench fuzz faults clean

# Static tools see the hazardlens namespace through a link tree with the installed layout
# (build/typecheck/hazardlens/...), because pyproject.toml maps it onto sibling folders.
LINKTREE := $(PY) .ci/linktree.py --

# venv + install (torch/torchvision pinned first: pip takes these releases from the machine's disk).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# Debian's Chromium for the console's end-to-end tests (never a browser download by Playwright).
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk; }

# Poppler's pdftoppm/pdftotext: the tests render the printable inspection record and read its text.
pdftools:
	@command -v pdftoppm >/dev/null 2>&1 && command -v pdftotext >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq poppler-utils; }

# Label Studio 1.23.2 for tests/test_labelstudio_live.py (slow), in a venv of its own under var/
# (its pins conflict with ours), installed once, with an empty database migrated once (`version`
# applies the migrations and exits; the test starts from a copy). When it cannot be installed (no
# PyPI) the test skips saying so, and the next `make test` tries again.
LS_VENV ?= var/ls-venv
$(LS_VENV)/.installed:
	@python3 -m venv $(LS_VENV) && $(LS_VENV)/bin/pip install -q "label-studio==1.23.2" \
	  && LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false $(LS_VENV)/bin/label-studio version --data-dir $(LS_VENV)/migrated >/dev/null \
	  && touch $@ \
	  || { echo "label-studio 1.23.2 not installed: tests/test_labelstudio_live.py will skip"; rm -rf $(LS_VENV); }

labelstudio: $(LS_VENV)/.installed

run: setup
	$(VENV)/bin/hazardlens init
	$(VENV)/bin/hazardlens serve --host $(HOST) --port $(PORT)

test: setup browser pdftools labelstudio lint
	$(PY) -m pytest -q -p no:cacheprovider

# The suite without the tests that train or run a real model (slow) and the headless-Chromium ones.
test-fast: setup pdftools
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow and not browser"

# ruff, the import rules of docs/ARCHITECTURE.md, mypy (make test runs `lint`: these plus the format check).
lint-code: setup
	$(VENV)/bin/ruff check .
	$(LINKTREE) $(VENV)/bin/lint-imports
	$(LINKTREE) $(VENV)/bin/mypy

lint: lint-code
	$(VENV)/bin/ruff format --check .

screenshots: setup browser
	$(PY) -m hazardlens.serving.console.screenshots --out docs

openapi: setup
	$(PY) -m hazardlens.serving.openapi
	$(PY) -m hazardlens.error_codes docs/error-codes.md

bench: setup
	$(PY) benchmarks/ingest_bench.py
	$(PY) benchmarks/serve_bench.py

# The long fuzz pass over every upload and import parser (docs/SECURITY.md): the targets of
# tests/test_fuzz.py with random seeds for FUZZ_MINUTES (the suite runs them briefly, derandomized).
FUZZ_MINUTES ?= 10
fuzz: setup
	$(PY) benchmarks/fuzz_long.py --minutes $(FUZZ_MINUTES)

# The fault suite alone: real servers killed, MinIO and PostgreSQL stopped, a disk filled (root for tmpfs).
faults: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/test_faults.py

clean:
	rm -rf $(VENV) var
