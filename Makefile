# Everything a developer or CI runs. `make serve` and `make test` work on a fresh machine:
# they create .venv and install the project (with its test tools) into it first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup serve test lint format openapi check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,compat]'
	touch $@

serve: setup
	$(BIN)/spatial-dropout serve

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check service tests $(wildcard bench)
	$(BIN)/ruff format --check service tests $(wildcard bench)
	$(BIN)/mypy service
	$(BIN)/spatial-dropout openapi --check

format: setup
	$(BIN)/ruff check --fix service tests $(wildcard bench)
	$(BIN)/ruff format service tests $(wildcard bench)

openapi: setup
	$(BIN)/spatial-dropout openapi

check: lint test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis data
