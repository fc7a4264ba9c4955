# The two set-up commands: `make demo` (the main job on embedded defaults) and `make test` (the whole suite).
# Both create .venv and install the project into it on first use (again when pyproject.toml changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bigearth demo --workdir runs/demo

test: $(STAMP)
	$(BIN)/ruff check platform jobs tests bench
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check platform jobs tests bench
	$(BIN)/ruff format --check platform jobs tests bench || true
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/input_pipeline.py

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
