# Two commands for a new user: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-installed
DEMO_DIR ?= demo

.PHONY: install demo test test-slow lint model bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch is installed alone first and pinned: an unpinned torch pulls the CUDA build.
$(DEPS_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]" --config-settings editable_mode=strict
	touch $(DEPS_STAMP)

# Strict editable mode maps the folders into cryodiscovery.* exactly as a wheel does;
# re-running it picks up modules added since the last install (a second or two).
install: $(DEPS_STAMP)
	$(PY) -m pip install -q --no-deps -e . --config-settings editable_mode=strict

demo: install
	$(VENV)/bin/cryodiscovery demo --out $(DEMO_DIR)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy -p cryodiscovery.core

# pytest exit 5 means nothing was collected: reported, not hidden as a pass of real tests.
test: lint
	$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; rc=1; fi; exit $$rc

test-slow: install
	$(PY) -m pytest -q -m slow; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no slow tests collected"; rc=0; fi; exit $$rc

model: install
	$(PY) scripts/train_default_model.py

bench: install
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf build *.egg-info .pytest_cache .mypy_cache .ruff_cache $(DEMO_DIR)
