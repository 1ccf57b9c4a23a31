# gapfix — developer entry points. Every target installs into .venv first (idempotent).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install test test-fast lint format run bench bench-scale gpu-check clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	@# Browser tests (tests/test_ui_browser.py) need Debian's chromium; CI runs as root.
	@if [ "$$(id -u)" = 0 ]; then command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium); fi
	$(PY) -m ruff check gapfix service tests benchmarks
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check gapfix service tests benchmarks
	$(PY) -m ruff format --check gapfix service tests benchmarks

format: $(STAMP)
	$(PY) -m ruff format gapfix service tests benchmarks
	$(PY) -m ruff check --fix gapfix service tests benchmarks

run: $(STAMP)
	$(VENV)/bin/gapfix serve --host $(HOST) --port $(PORT)

bench: $(STAMP)
	@# The loopback load benchmark (benchmarks/bench_load.py) drives the server with Debian's wrk.
	@if [ "$$(id -u)" = 0 ]; then command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk); fi
	$(PY) -m benchmarks

bench-scale: $(STAMP)
	@# opt-in: millions of vectors through the store (e.g. SCALE_ARGS="--n 1000000 --kinds ivfpq")
	$(PY) -m benchmarks.scale $(SCALE_ARGS)

gpu-check: $(STAMP)
	@# the gpu-marked tests + GPU benchmarks + one table; run it on a machine with a CUDA GPU
	timeout 480 $(PY) -m benchmarks.gpu_check

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
