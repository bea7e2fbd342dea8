# Two entry points a user needs: `make demo` and `make test` (and `make serve` to serve the demo's champion).
# All create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= train,flows,serve,pbt,dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: demo test test-fast test-slow server-envs check format bench venv clean serve

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# TORCH_INDEX: install torch and torchvision (the pins in pyproject.toml) from another index first, e.g. PyTorch's
# CPU-only wheels: `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu` (no CUDA wheels; README: Install).
TORCH_INDEX ?=
TORCH_PINS := $(shell grep -oE '"torch(vision)?==[^"]+"' pyproject.toml | tr -d '"')

$(STAMP): pyproject.toml | $(BIN)/python
	$(if $(TORCH_INDEX),$(BIN)/pip install -q --index-url $(TORCH_INDEX) $(TORCH_PINS))
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(STAMP)

# The demo writes into $ALLOYNET_HOME, else ./demo-data: where `make serve` and every command look (alloynet/settings.py).
demo: $(STAMP)
	$(BIN)/alloynet demo

# Triton (gRPC on PORT, default 8001) on the registry's champion, supervised: `make serve PORT=9001`. The registry
# is $ALLOYNET_REGISTRY, else $ALLOYNET_HOME/registry (ALLOYNET_HOME defaults to demo-data, where `make demo` writes).
PORT ?= 8001
serve: $(STAMP)
	infra/serving_env.sh
	$(BIN)/alloynet serve start --triton-grpc-port $(PORT)

# The quality gates: ruff (lint and format) on the whole tree, mypy on the typed packages (pyproject.toml).
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Three tiers (CONTRIBUTING.md), each printing its 10 slowest tests.
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=10

# The servers' environments, idempotent installs: Triton and TorchServe (.venv-triton), Chromium for the Prefect
# UI, Debian's PostgreSQL.
server-envs:
	infra/serving_env.sh
	infra/browser_env.sh
	infra/postgres_env.sh

# The default: the gates, then every test not marked slow, unit and integration, with real servers where a test
# needs one.
test: check server-envs
	$(PYTEST) -m "not slow" tests

# The unit tier: tests/unit, no servers, no end-to-end runs.
test-fast: $(STAMP)
	$(PYTEST) -m "not slow and not serving and not s3" tests/unit

# The heavy end-to-end runs marked slow (the study, the fan-out, the demo, the UI, a simulated month): CI runs
# them after `make test`.
test-slow: $(STAMP) server-envs
	$(PYTEST) -m slow tests

bench: $(STAMP)
	$(BIN)/python bench/simulate.py

clean:
	rm -rf demo-data runs .pytest_cache
