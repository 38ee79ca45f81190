# Two entry points a fresh machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev

.PHONY: run test lint bench clean install

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEVSTAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,ray,multilingual]'
	touch $@

install: $(STAMP)

## Start the daemon in the foreground on the bundled tiny.en model, watching ~/Insightron/inbox.
run: $(STAMP)
	$(BIN)/insightron-watchd run $(if $(CONFIG),--config $(CONFIG))

## Lint, type-check and run the whole test suite (model tests included).
test: $(DEVSTAMP)
	$(BIN)/ruff check insightron_watchd tests bench
	$(BIN)/ruff format --check insightron_watchd tests bench
	$(BIN)/mypy
	$(BIN)/pytest

## Raw faster-whisper vs the daemon on ../shared/audio; writes bench/results/ and README's table.
bench: $(DEVSTAMP)
	$(BIN)/python bench/run.py --update-readme $(BENCH_ARGS)

lint: $(DEVSTAMP)
	$(BIN)/ruff check insightron_watchd tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
