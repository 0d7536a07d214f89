# STARS pipeline: `make help` lists the targets.
VENV   ?= .venv
PY     := $(VENV)/bin/python
DVC    := $(VENV)/bin/dvc
PORT   ?= 5000
PRESET ?= ntu60-xsub
export PATH := $(abspath $(VENV))/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup repro test test-slow test-all ui report bench gpu-check lint exp

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

setup: $(VENV)/.installed  ## create .venv and install the package (editable, with dev extras)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

repro: setup  ## run the whole DVC pipeline (synthesize -> ... -> report)
	$(DVC) repro

test: setup  ## the fast test suite
	$(PY) -m pytest -m "not slow" -q

test-slow: setup  ## only the slow tests (end-to-end DVC run, 2-process DDP, browser)
	$(PY) -m pytest -m slow -q

test-all: setup  ## every test, slow ones included
	$(PY) -m pytest -q

ui: setup  ## MLflow UI on http://127.0.0.1:$(PORT) (localhost only)
	$(PY) -m pipeline.cli.ui --port $(PORT)

report: setup  ## reports/report.html and reports/report.md (runs what is missing first)
	$(DVC) repro report

bench: setup  ## benchmarks -> benchmarks/RESULTS.md and benchmarks/results.json
	$(PY) -m benchmarks.run

gpu-check: setup  ## CUDA only: pipeline + paper-size speed, fp32 and bf16 -> benchmarks/GPU.md
	$(PY) -m benchmarks.gpu_check

lint: setup  ## ruff over the code
	$(VENV)/bin/ruff check pipeline stages tests benchmarks

exp: setup  ## run a paper preset as a DVC experiment: make exp PRESET=ntu60-xsub
	args="$$($(PY) -m pipeline preset-args $(PRESET))" && $(DVC) exp run $$args
