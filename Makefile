# Switchboard: every target creates or refreshes the local virtualenv first.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA_DIR ?= .data
PORT   ?= 8080
PYTEST_ARGS ?=

.PHONY: run test test-unit test-integration test-e2e bench lint migrate schemas venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/switchboard up --data-dir $(DATA_DIR) --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: $(STAMP)
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m tests.bench.run --output bench-results.json

lint: $(STAMP)
	$(BIN)/ruff check services shared tests
	$(BIN)/ruff format --check services shared tests

migrate: $(STAMP)
	$(BIN)/switchboard migrate

schemas: $(STAMP)
	$(BIN)/switchboard schemas generate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache bench-results.json
