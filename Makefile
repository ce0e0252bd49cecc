# Two commands for a new user: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-installed
DEMO_DIR ?= demo
# pip quietly: no version check, and without the "Location '...' is ignored" warnings that
# a machine-wide pip config naming missing index folders prints once per package (its other
# messages, and its exit status, are kept: recipes run with pipefail).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PIP := $(PY) -m pip install -q --disable-pip-version-check
PIP_FILTER := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: install demo test test-slow lint model bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip $(PIP_FILTER)

# pyproject asks for torch>=2.13; the venv gets the tested CPU build, installed alone first
# and pinned again beside the package: an unpinned torch pulls the CUDA build (several GB).
# The federation extra is installed too, so the tests cover everything.
TORCH ?= torch==2.13.0
$(DEPS_STAMP): pyproject.toml | $(PY)
	$(PIP) "$(TORCH)" $(PIP_FILTER)
	$(PIP) "$(TORCH)" -e ".[dev,federation]" $(PIP_FILTER)
	touch $(DEPS_STAMP)

install: $(DEPS_STAMP)

demo: install
	$(VENV)/bin/cryodiscovery demo --out $(DEMO_DIR)

# mypy cannot follow the editable install's import hook, so it reads the namespace
# from a tree of links that maps each folder where the wheel puts it.
TYPECHECK := build/typecheck
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	mkdir -p $(TYPECHECK)/cryodiscovery
	for d in core relion_external cryosparc_job federation; do \
	  ln -sfn ../../../$$d $(TYPECHECK)/cryodiscovery/$$d; done
	MYPYPATH=$(TYPECHECK) $(VENV)/bin/mypy --cache-dir build/mypy-cache -p cryodiscovery.core

# pytest exit 5 means nothing was collected: reported, not hidden as a pass of real tests.
test: lint
	$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; rc=1; fi; exit $$rc

test-slow: install
	$(PY) -m pytest -q -m slow; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no slow tests: failing"; rc=1; fi; exit $$rc

model: install
	$(PY) scripts/train_default_model.py

bench: install
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf build *.egg-info .pytest_cache .mypy_cache .ruff_cache $(DEMO_DIR)
