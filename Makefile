# IDT: development tasks. GNU make; works from a fresh clone (creates .venv).
#
#   make run              start Redis and every service (`idt up`); ARGS="..." passes options
#   make test             the whole test suite
#   make check            formatting, lint and types, as CI would
#
# PYTHON picks the interpreter that creates the virtualenv (3.11 or newer).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

.PHONY: help install run test chaos fuzz bench check fmt clean

help: ## Show this help
	@echo "Targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'
	@echo "Variables: PYTHON=$(PYTHON) (3.11+), ARGS (options for 'make run')"

# The virtualenv, (re)installed whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@command -v "$(PYTHON)" >/dev/null 2>&1 || { \
		echo "error: '$(PYTHON)' not found; install Python 3.11 or newer, or run 'make PYTHON=/path/to/python3.11 ...'" >&2; \
		exit 1; }
	@"$(PYTHON)" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "error: Python 3.11 or newer is needed; '$(PYTHON)' is $$("$(PYTHON)" -c 'import platform; print(platform.python_version())'). Run 'make PYTHON=python3.11 ...'" >&2; \
		exit 1; }
	@test -x "$(BIN)/python" || "$(PYTHON)" -m venv "$(VENV)" || { \
		echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu install the python3-venv package" >&2; \
		rm -rf "$(VENV)"; exit 1; }
	@"$(BIN)/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "error: $(VENV) was made with a Python older than 3.11; remove it ('rm -rf $(VENV)') and run make again" >&2; \
		exit 1; }
	"$(BIN)/python" -m pip install --disable-pip-version-check --quiet -e ".[dev]"
	@touch "$@"

install: $(VENV)/.installed ## Create .venv and install the project with its dev tools

run: $(VENV)/.installed ## Run Redis, every service and the demo simulator (Ctrl-C stops)
	"$(BIN)/idt" up --demo $(ARGS)

test: $(VENV)/.installed ## Run the whole test suite
	"$(BIN)/python" -m pytest -q

chaos: $(VENV)/.installed ## Only the fault tests (kills, Redis crash, outages); `make test` runs them too
	"$(BIN)/python" -m pytest -q -m chaos

fuzz: $(VENV)/.installed ## Only the fuzz tests (decoder, every service's OpenAPI); `make test` runs them too
	"$(BIN)/python" -m pytest -q -m fuzz

bench: $(VENV)/.installed ## Benchmark the whole pipeline (1M events; ARGS="--help" for sizes, PostgreSQL, profile); writes bench/results.md
	"$(BIN)/python" -m bench $(ARGS)

check: $(VENV)/.installed ## Check formatting, lint and types (ruff, mypy)
	"$(BIN)/ruff" format --check .
	"$(BIN)/ruff" check .
	"$(BIN)/mypy" .

fmt: $(VENV)/.installed ## Format the code and apply safe lint fixes
	"$(BIN)/ruff" format .
	"$(BIN)/ruff" check --fix .

clean: ## Remove var/ and caches (keeps .venv)
	rm -rf var .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d -print0 | \
		xargs -0 rm -rf
