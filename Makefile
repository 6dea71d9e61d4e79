# Entry points for learners and CI. Every target first makes sure the virtualenv exists.
# `make help` lists them.  LAB accepts a path, 1.1, or phase-01/lab-01.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
PYTEST := $(PY) -m pytest
# self-tests run this many at a time in `make test` / `make test-phase-N` (each is single-threaded)
JOBS ?= 2

# Offline data: use the course's shared/data mirror next to the repo when there is one.
ifeq ($(LABKIT_DATA_MIRROR),)
  ifneq ($(wildcard ../shared/data/MANIFEST.md),)
    export LABKIT_DATA_MIRROR := $(abspath ../shared/data)
  endif
endif
export MPLBACKEND := Agg
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# llama-cpp-python (capstone 9) ships only as source: pip compiles llama.cpp during `make setup`.
# Build just the shared library (no llava, tests, examples, tools or server), which is all the
# Python package needs. Override CMAKE_ARGS for a GPU build, e.g. CMAKE_ARGS=-DGGML_CUDA=on.
CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
export CMAKE_ARGS
CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
export CMAKE_BUILD_PARALLEL_LEVEL

LAB_DIR = $(shell $(PYTHON) -m labkit resolve "$(LAB)")
phase_dir = $(wildcard phase-$(shell printf %02d $(1))-*)

.DEFAULT_GOAL := help
.PHONY: help setup test selftest check run diff progress figures bench labs labs-check lint doctor clean need-lab model \
        test-system-design system-design test-interview-prep
# test-phase-N is a pattern rule: GNU make skips implicit-rule search for .PHONY targets, so the
# test-phase-N names must not be listed above (they were, and `make test-phase-N` did nothing).

help: ## list the targets
	@echo "LLM engineer curriculum. Usage: make <target> [LAB=1.1]"
	@grep -E '^[a-zA-Z0-9_%-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@$(PY) -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else 'torch was changed to ' + v + ': reinstall torch==2.13.0')"
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install every pinned requirement (torch first)

test: $(STAMP) ## run every lab's self-test, then every grader against solution.py
	$(PY) -m labkit.runner selftest --jobs $(JOBS)
	$(PYTEST) -m "not gpu"

test-phase-%: $(STAMP) ## test-phase-N: self-tests and graders of phase N
	@d="$(call phase_dir,$*)"; if [ -z "$$d" ]; then echo "phase $* is not built yet"; exit 0; fi; \
	$(PY) -m labkit.runner selftest --jobs $(JOBS) $$d && $(PYTEST) -m "not gpu" $$d

selftest: $(STAMP) ## run every solution.py self-test (LAB=… for one)
	$(PY) -m labkit.runner selftest $(LAB)

check: $(STAMP) need-lab ## grade your lab.py: make check LAB=1.1
	LAB_TARGET=lab $(PYTEST) -q -p no:cacheprovider "$(LAB_DIR)"

run: $(STAMP) need-lab ## run the solution's self-test/demo: make run LAB=1.1
	cd "$(LAB_DIR)" && $(abspath $(PY)) solution.py $(ARGS)

diff: $(STAMP) need-lab ## show your lab.py against solution.py
	-diff -u "$(LAB_DIR)/lab.py" "$(LAB_DIR)/solution.py"

progress: $(STAMP) ## per lab: TODOs left in lab.py and tests passing against it
	$(PY) -m labkit.runner progress

figures: $(STAMP) need-lab ## refresh the committed figures/ PNGs a README links: make figures LAB=1.1
	cd "$(LAB_DIR)" && LABKIT_WRITE_FIGURES=1 $(abspath $(PY)) solution.py $(ARGS)

bench: $(STAMP) ## run self-tests (LAB=… for one) and keep their printed tables in .cache/bench
	$(PY) -m labkit.runner selftest --log-dir .cache/bench $(LAB)

labs: $(STAMP) ## regenerate every lab.py from its solution.py (and requirements.txt)
	$(PY) -m labkit.labgen

labs-check: $(STAMP) ## fail when a committed lab.py, requirements.txt or system-design walkthrough is out of date
	$(PY) -m labkit.labgen --check
	cd system-design && $(abspath $(PY)) -m capacity.render --check

test-interview-prep: $(STAMP) ## the interview-prep drills: self-tests and graders
	@if [ ! -d interview-prep ]; then echo "interview-prep is not built yet"; exit 0; fi; \
	$(PY) -m labkit.runner selftest --jobs $(JOBS) interview-prep && $(PYTEST) -m "not gpu" interview-prep

test-system-design: $(STAMP) ## the capacity calculators' tests and the walkthroughs' freshness check
	$(PYTEST) -m "not gpu" system-design

system-design: $(STAMP) ## re-render system-design/*.md from templates/ and capacity/
	cd system-design && $(abspath $(PY)) -m capacity.render

lint: $(STAMP) ## ruff
	$(PY) -m ruff check .

model: $(STAMP) ## build the curriculum's own small model and its draft once (cached in .cache/models, ~5 min)
	$(PY) -m labkit.curriculum main draft

doctor: $(STAMP) ## environment check: Python, pinned packages, data, GPU
	$(PY) -m labkit.runner doctor

need-lab:
	@test -n "$(LAB)" || { echo "say which lab: make $(MAKECMDGOALS) LAB=1.1 (or a path)"; exit 2; }
	@$(PYTHON) -m labkit resolve "$(LAB)" >/dev/null

clean: ## remove the virtualenv and caches (your lab.py files are kept)
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
