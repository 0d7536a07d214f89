# STARS pipeline: `make help` lists the targets.
VENV   ?= .venv
PY     := $(VENV)/bin/python
DVC    := $(VENV)/bin/dvc
PORT   ?= 5000
PRESET ?= ntu60-xsub
export PATH := $(abspath $(VENV))/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup check repro test test-slow test-all ui register report bench gpu-check lint exp exps

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

setup: $(VENV)/.installed  ## create .venv and install the package (editable, with dev extras)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

check: setup  ## validate params.yaml and the raw data (make repro/exp/report do it first)
	$(PY) -m pipeline check

# Each DVC command runs only after the check passed: DVC deletes a stage's outputs before the
# stage could reject a bad parameter.
repro: check  ## run the whole DVC pipeline (synthesize -> ... -> report)
	$(DVC) repro

test: setup  ## the fast test suite
	$(PY) -m pytest -m "not slow" -q

test-slow: setup  ## only the slow tests (end-to-end DVC run, 2-process DDP, browser)
	$(PY) -m pytest -m slow -q -n 2 --dist loadfile

test-all: setup  ## every test, slow ones included
	$(PY) -m pytest -q

ui: setup  ## MLflow UI on http://127.0.0.1:$(PORT) (localhost only; prints the runs URL)
	$(PY) -m pipeline.cli.ui --port '$(PORT)'

register: setup  ## register the evaluated encoders as mamp-encoder / stars-encoder @champion
	$(PY) -m pipeline.cli.register

report: check  ## reports/report.html and reports/report.md (runs what is missing first)
	$(DVC) repro report

bench: setup  ## benchmarks -> benchmarks/RESULTS.md and benchmarks/results.json
	$(PY) -m benchmarks.run

gpu-check: setup  ## CUDA only: pipeline + paper-size speed, fp32 and bf16 -> benchmarks/GPU.md
	$(PY) -m benchmarks.gpu_check

lint: setup  ## ruff over the code
	$(VENV)/bin/ruff check pipeline stages tests benchmarks

# `dvc exp run -S` rewrites params.yaml first; a failed run puts it back as it was.
exp: setup  ## run a paper preset as a DVC experiment: make exp PRESET=ntu60-xsub
	$(PY) -m pipeline check --preset $(PRESET)
	@args="$$($(PY) -m pipeline preset-args $(PRESET))" && saved="$$(mktemp)" && \
	cp params.yaml "$$saved" && echo "$(DVC) exp run $$args" && \
	if $(DVC) exp run $$args; then rm -f "$$saved"; else rc=$$?; mv -f "$$saved" params.yaml; \
	echo "make exp: the run failed; params.yaml is back as it was" >&2; exit $$rc; fi

# The columns of `make exps`: params (their groups, as in params.yaml) that differ between the
# rows, and the headline metrics of both models: kNN, linear and few-shot from
# metrics/evaluate.json, and each fine-tuning protocol's <model>.<protocol>.top1 when
# metrics/finetune.json exists.
PARAM_GROUPS := data|synth|preprocess|model|pretrain|tune|eval|finetune|transfer|report|dist|tracking
HEADLINE     := knn_top1_k1|linear_top1|fewshot_knn_k1|fewshot_5way_1shot_proto_mean|\w+\.top1
exps: setup  ## `dvc exp show`: only the params that differ and the headline metrics
	$(DVC) exp show --only-changed --drop '(?!($(PARAM_GROUPS))\.)' \
	    --keep '^(Experiment|rev|Created|(metrics/\w+\.json:)?(mamp|stars)\.($(HEADLINE))$$)' $(ARGS)
