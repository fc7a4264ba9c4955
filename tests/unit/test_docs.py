"""The docs stay true to the code: the configuration reference is generated from the models; every command line of
ours in README.md and docs/ is accepted by its argument parser; every Python block compiles and its bigearth
imports resolve; every relative link points to a file. Cluster commands (kubectl, helm, docker, ray job submit,
serve deploy) are checked by tests/integration/test_infra.py through the manifests instead."""

from __future__ import annotations

import argparse
import importlib
import re
import runpy
import shlex
import sys
from pathlib import Path
from unittest import mock

import pytest

from helpers import REPO

DOCS = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    REPO / "serve" / "README.md",
    REPO / "infra" / "README.md",
]
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)


def _blocks(lang: str) -> list[tuple[Path, str]]:
    return [(p, m.group(2)) for p in DOCS for m in BLOCK.finditer(p.read_text()) if m.group(1) == lang]


def _commands() -> list[tuple[str, list[str]]]:
    out = []
    for path, block in _blocks("bash"):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split(" #", 1)[0].strip()
            line = re.split(r"\s(?:&&|\|\||;|\|)\s|\s&$|&$", line)[0].strip()
            if not line or line.startswith("#"):
                continue
            try:
                words = shlex.split(line)
            except ValueError:
                continue
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]
            if words and (
                words[0] in ("bigearth", ".venv/bin/bigearth", "make")
                or (
                    words[0] in ("python", ".venv/bin/python")
                    and len(words) > 1
                    and words[1].startswith(("jobs/", "bench/"))
                )
            ):
                out.append((f"{path.relative_to(REPO)}: {line}", words))
    return out


class _Parsed(Exception):
    pass


COMMANDS = _commands()


def test_the_configuration_reference_is_generated_from_the_models() -> None:
    from bigearth.cli.docgen import configuration_md

    assert (REPO / "docs" / "configuration.md").read_text() == configuration_md(), (
        "docs/configuration.md is stale: python -m bigearth.cli.docgen > docs/configuration.md"
    )


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) > 20


@pytest.mark.parametrize(("where", "words"), COMMANDS, ids=[c[0][:90] for c in COMMANDS])
def test_every_documented_command_is_accepted_by_its_parser(where: str, words: list[str]) -> None:
    if words[0] == "make":
        targets = set(re.findall(r"^([a-z]+):", (REPO / "Makefile").read_text(), re.M))
        assert set(words[1:]) <= targets, where
        return
    original = argparse.ArgumentParser.parse_args

    def parse_only(self: argparse.ArgumentParser, args: list[str] | None = None, namespace: object = None) -> None:
        original(self, args, namespace)  # exits with status 2 on an unknown option or a bad value
        raise _Parsed

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_only), pytest.raises(_Parsed):
        if words[0].endswith("bigearth"):
            from bigearth.cli import main

            main(words[1:])
        else:
            script = REPO / words[1]
            assert script.exists(), where
            with mock.patch.object(sys, "argv", [str(script), *words[2:]]):
                sys.path.insert(0, str(script.parent))
                try:
                    runpy.run_path(str(script), run_name="__main__")
                finally:
                    sys.path.remove(str(script.parent))


@pytest.mark.parametrize(
    ("path", "block"), _blocks("python"), ids=lambda x: str(x)[-40:] if isinstance(x, Path) else ""
)
def test_python_blocks_compile_and_their_imports_resolve(path: Path, block: str) -> None:
    compile(block, str(path), "exec")
    for module, names in re.findall(r"^\s*from (bigearth[\w.]*) import ([\w, ]+)", block, re.M):
        mod = importlib.import_module(module)
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(mod, name), f"{path.name}: {module} has no {name}"


def test_relative_links_point_to_files() -> None:
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)\)", path.read_text()):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.relative_to(REPO)} links to a missing {target}"


OURS = re.compile(r"^(?:[A-Z_]+=\S*\s+)*(?:\.venv/bin/)?(?:bigearth|make|python3? (?:jobs|bench)/)")


def test_every_code_block_is_run_checked_or_marked() -> None:
    """Each block is run by a test (docs/api.md's Python), parse-checked (our commands, above), or marked
    `<!-- needs: ... -->` with what it needs (the real archive, a service, a cluster)."""
    unmarked = []
    for path in DOCS:
        text = path.read_text()
        for m in BLOCK.finditer(text):
            lang, block = m.group(1), m.group(2)
            if lang not in ("bash", "python"):
                continue  # diagrams, folder trees, JSON examples
            before = text[: m.start()].rstrip().splitlines()[-1:] or [""]
            if before[0].startswith("<!-- needs:"):
                continue
            if lang == "python" and path.name == "api.md":
                continue  # run by tests/integration/test_serve.py::test_the_api_docs_examples_run
            lines = [
                x for x in re.sub(r"\\\n\s*", " ", block).splitlines() if x.strip() and not x.strip().startswith("#")
            ]
            if lang == "bash" and all(OURS.match(x.strip()) for x in lines):
                continue  # parse-checked by test_every_documented_command_is_accepted_by_its_parser
            unmarked.append(f"{path.relative_to(REPO)}: {block.strip().splitlines()[0][:80]}")
    assert unmarked == []
