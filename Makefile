# ASR Workbench: `make demo` (set up + run the demo), `make test` (set up + run the tests).
# Both create .venv/ at the repository root unless a virtual environment is active.
SHELL := /bin/bash
ifdef VIRTUAL_ENV
PY := python
else
PY := .venv/bin/python
endif

.PHONY: setup system-deps test test-all demo demo-build lab clean

system-deps:
	@bash .ci/system-deps.sh

setup: system-deps
	@if [ -z "$$VIRTUAL_ENV" ] && [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'

test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m ''

demo: setup
	$(PY) -m asr_workbench run params/demo/demo.pipeline.yaml

lab: setup
	$(PY) -m jupyter lab notebooks/

demo-build: setup
	$(PY) -m asr_workbench.demo.build

clean:
	rm -rf build outputs/*/ .pytest_cache
