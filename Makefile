# Every target creates .venv when it is missing; torch==2.13.0 (CPU build) is installed first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The web viewer (NiiVue, pinned in package-lock.json) is installed from npm and copied into an ignored
# static folder, so the app serves it itself (no CDN). Needs node + npm (Debian: apt-get install nodejs npm).
VENDOR := src/liverseg/web/static/vendor
VIEWER := $(VENDOR)/niivue.umd.js

.PHONY: install viewer test test-fast serve bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(VIEWER): package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "npm not found: install node and npm (Debian: apt-get install nodejs npm), then run make again" >&2; exit 1; }
	npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	mkdir -p $(VENDOR)
	cp node_modules/@niivue/niivue/dist/niivue.umd.js $(VIEWER).tmp && mv $(VIEWER).tmp $(VIEWER)

viewer: $(VIEWER)

install: $(STAMP) $(VIEWER)

test: $(STAMP) $(VIEWER)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser"

serve: $(STAMP) $(VIEWER)
	$(BIN)/liverseg serve --data-dir ./liverseg-data

bench: $(STAMP)
	$(BIN)/python benchmarks/model_speed.py
	$(BIN)/python benchmarks/predict_speed.py

clean:
	rm -rf $(VENV) build *.egg-info node_modules $(VENDOR)
