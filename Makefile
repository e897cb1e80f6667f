# Everything a developer or CI runs. `make serve` and `make test` work on a fresh machine:
# they create .venv and install into it what they need first. `make serve` installs the
# project alone (its runtime dependencies); `make test` and `make setup` add the test tools,
# Keras and torch into the same .venv, so going from one to the other upgrades it in place;
# `make test` also installs onnxruntime-web with npm (Node.js and npm must be on the PATH).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup runtime serve test lint format openapi check bench image clean

setup: $(VENV)/.installed

runtime: $(VENV)/.runtime

# Order-only prerequisite of both stamps: an existing .venv is reused, never recreated.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The C extensions are optional: a failed build must not leave an old one behind.
EXTENSIONS := service/core/_fastkernel.c service/codecs/_numbers.c

$(VENV)/.runtime: pyproject.toml $(EXTENSIONS) | $(BIN)/python
	rm -f $(EXTENSIONS:.c=.*.so)
	$(BIN)/pip install --quiet -e .
	touch $@

# A full install holds the runtime one too: its stamp is renewed with it.
$(VENV)/.installed: pyproject.toml $(EXTENSIONS) | $(BIN)/python
	rm -f $(EXTENSIONS:.c=.*.so)
	$(BIN)/pip install --quiet -e '.[dev,compat]'
	touch $@ $(VENV)/.runtime

serve: runtime
	$(BIN)/spatial-dropout serve

# onnxruntime-web (WebAssembly, run by Node) for tests/onnx: from the npm registry, at the
# versions its lock file pins.
WEB := tests/onnx/web
$(WEB)/node_modules/.installed: $(WEB)/package.json $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

test: setup $(WEB)/node_modules/.installed
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check service tests harness docker $(wildcard bench)
	$(BIN)/ruff format --check service tests harness docker $(wildcard bench)
	$(BIN)/mypy service
	$(BIN)/hadolint docker/Dockerfile
	$(BIN)/spatial-dropout openapi --check

format: setup
	$(BIN)/ruff check --fix service tests harness $(wildcard bench)
	$(BIN)/ruff format service tests harness $(wildcard bench)

openapi: setup
	$(BIN)/spatial-dropout openapi

check: lint test

# The benchmark (not a test: it asserts nothing; README, "Performance"). The load points
# use Debian's wrk, installed here when missing (as root); without it bench/ falls back to its
# own Python load generator. `make bench BENCH_ARGS=--quick` for a smoke run.
BENCH_ARGS ?=
bench: setup
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } \
	  || echo "wrk is not installed: bench uses its Python load generator" >&2
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The container image, with podman or docker (whichever is installed); README, "Deploying".
# `make image IMAGE=name:tag PYTHON_IMAGE=base` to choose the tag or the base.
IMAGE ?= spatial-dropout:latest
image:
	$(PYTHON) docker/build.py --tag $(IMAGE) $(if $(PYTHON_IMAGE),--python-image $(PYTHON_IMAGE))

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis data $(WEB)/node_modules
