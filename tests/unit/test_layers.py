"""The layering of the package, as the import-linter contracts in pyproject.toml state it (`make lint` runs the same
check): foundations at the bottom, models without Ray or the data pipeline, serving above retrieval, nothing
importing the CLI. The import graph is read from the source files; nothing is imported."""

from __future__ import annotations

import tomllib

import importlinter.api  # noqa: F401  (sets up import-linter; its CLI module would reconfigure logging)
import pytest
from importlinter.application import use_cases

from helpers import REPO


def test_the_import_contracts_hold(capsys: pytest.CaptureFixture[str]) -> None:
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert len(contracts) >= 7
    kept = use_cases.lint_imports(config_filename=str(REPO / "pyproject.toml"), cache_dir=None, no_logo=True)
    report = capsys.readouterr().out
    assert all(f"{c['name']} KEPT" in report or f"{c['name']} BROKEN" in report for c in contracts), report
    assert kept, report
