# Two entry points a fresh machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev

.PHONY: run test lint clean install

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEVSTAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

## Start the daemon in the foreground on the bundled tiny.en model, watching ~/Insightron/inbox.
run: $(STAMP)
	$(BIN)/insightron-watchd run $(if $(CONFIG),--config $(CONFIG))

## Lint, type-check and run the whole test suite (model tests included).
test: $(DEVSTAMP)
	$(BIN)/ruff check insightron_watchd tests
	$(BIN)/ruff format --check insightron_watchd tests
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(DEVSTAMP)
	$(BIN)/ruff check insightron_watchd tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
