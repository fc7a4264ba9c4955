# The two set-up commands: `make demo` (the main job on embedded defaults) and `make test` (the whole suite).
# Both create .venv and install the project into it on first use (again when pyproject.toml changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled

.PHONY: install browser demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bigearth demo --workdir runs/demo

# Headless Chromium for the web page's tests (tests/browser.py): Debian's chromium and chromium-driver.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null; }; }

test: $(STAMP) browser
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
