# Two commands matter: `make demo` and `make test`. Everything else is a step they use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: setup demo test serve bench lint clean

$(STAMP): requirements.txt requirements-dev.txt
	@echo "installing the Python environment (first run only)..."
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

# Azurite (Blob Storage emulator) for the Azure storage contract and end-to-end tests.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# checkov (infra checks in tests/test_infra.py) pins packages that clash with ours: its own venv.
CHECKOV_VENV  ?= .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet checkov==3.3.30
	touch $@

setup: $(STAMP) $(NODE_STAMP) $(CHECKOV_STAMP)

demo: $(STAMP)
	$(PY) -m scripts.demo

test: setup
	$(PY) -m pytest

serve: $(STAMP)
	$(PY) -m shared.runtime

# Each script prints its figures beside the same run's anchors; report.py rewrites the README's table.
bench: $(STAMP)
	$(PY) bench/steps.py
	$(PY) bench/search.py
	$(PY) bench/api.py
	$(PY) bench/events.py
	$(PY) bench/report.py --readme

# Style, types, and the import contract (imports only go down; see docs/architecture.md).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf .data .pytest_cache
