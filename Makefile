# ASR Workbench: `make demo` (set up + run the demo), `make test` (set up + run the tests).
# Both create .venv/ at the repository root unless a virtual environment (or a non-base conda env) is active.
SHELL := /bin/bash
ifdef VIRTUAL_ENV
PY := python
ENV_DIR := $(VIRTUAL_ENV)
else ifneq ($(filter-out base,$(CONDA_DEFAULT_ENV)),)
PY := python
ENV_DIR := $(CONDA_PREFIX)
else
PY := .venv/bin/python
ENV_DIR := .venv
endif
# pip runs again only when the package list changes
INSTALLED := $(ENV_DIR)/.asr_workbench_installed

.PHONY: setup python-env system-deps test test-all demo demo-build lab clean

system-deps:
	@bash .ci/system-deps.sh

python-env: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@if [ "$(PY)" = ".venv/bin/python" ] && [ ! -x .venv/bin/python ]; then \
	  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	    { echo "Python 3.11 or newer is needed; python3 is $$(python3 --version 2>&1)" >&2; exit 1; }; \
	  python3 -m venv .venv; fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(INSTALLED)

setup: system-deps python-env

test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m ''

demo: python-env
	@bash .ci/system-deps.sh --required-none
	$(PY) -m asr_workbench run params/demo/demo.pipeline.yaml

lab: python-env
	$(PY) -m jupyter lab notebooks/

demo-build: setup
	$(PY) -m asr_workbench.demo.build

clean:
	rm -rf build outputs/*/ .pytest_cache
