# Two commands matter: `make demo` and `make test`. Everything else is a step they use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: setup demo test serve bench lint clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

# Azurite (Blob Storage emulator) for the Azure storage contract and end-to-end tests.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup: $(STAMP) $(NODE_STAMP)

demo: $(STAMP)
	$(PY) -m shared.demo

test: setup
	$(PY) -m pytest

serve: $(STAMP)
	$(PY) -m shared.runtime

bench: $(STAMP)
	$(PY) bench/steps.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf .data .pytest_cache
