# The two set-up commands: `make demo` (the main job on embedded defaults) and `make test` (the whole suite: lint, then
# the three tiers, each also on its own: `make test-unit`, `make test-integration`, `make test-e2e`).
# Both create .venv and install the project into it on first use (again when pyproject.toml changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled

.PHONY: install browser demo test test-unit test-integration test-e2e lint bench clean

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

# pytest options per tier (README "Tests in tiers"). The integration tier on 2 xdist workers, a module per unit of
# work (tests/conftest.py: each worker its own Ray): 501 s against ~785 s in one process on 2 cores. Unit (in-process,
# seconds each) and e2e (multi-node clusters that take both cores) in one process. `INTEGRATION_ARGS=` for one.
UNIT_ARGS ?=
INTEGRATION_ARGS ?= -n 2 --dist loadgroup
E2E_ARGS ?=

# every tier runs even when an earlier one fails (--keep-going); the target fails if any did
test: $(STAMP) browser
	$(BIN)/ruff check platform jobs tests bench serve
	$(BIN)/lint-imports --no-cache
	$(MAKE) --no-print-directory --keep-going test-unit test-integration test-e2e

# no Ray, no subprocess, no server, no network (tests/unit/conftest.py fails a test that starts Ray)
test-unit: $(STAMP)
	$(BIN)/pytest tests/unit $(UNIT_ARGS)

# a local Ray, SeaweedFS, one real Serve
test-integration: $(STAMP)
	$(BIN)/pytest tests/integration $(INTEGRATION_ARGS)

# CLI subprocesses, multi-node clusters, the browser, the demo
test-e2e: $(STAMP) browser
	$(BIN)/pytest tests/e2e $(E2E_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check platform jobs tests bench serve
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff format --check platform jobs tests bench || true
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/input_pipeline.py

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
