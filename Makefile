# Every target creates .venv when it is missing; torch==2.13.0 (CPU build) is installed first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast serve bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser"

serve: $(STAMP)
	$(BIN)/liverseg serve --data-dir ./liverseg-data

bench: $(STAMP)
	$(BIN)/python benchmarks/model_speed.py
	$(BIN)/python benchmarks/predict_speed.py

clean:
	rm -rf $(VENV) build *.egg-info
