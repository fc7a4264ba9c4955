"""The `bigearth` command: every stage (synth, ingest, stats, train, evaluate, index, evaluate-retrieval, serve, query,
demo, bench, import-reben, reproduce-table).

One module per command (`add(subparsers)` registers it, `run(args)` does it). Thin: parse, call the library,
print.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from bigearth.api.schemas import ServiceError
from bigearth.cli import (
    bench,
    demo,
    evaluate,
    evaluate_retrieval,
    import_reben,
    index,
    ingest,
    query,
    reproduce_table,
    serve,
    stats,
    synth,
    train,
)
from bigearth.cli.common import add_storage_args, storage_from_args
from bigearth.core.secrets import redact_text

__all__ = ["add_storage_args", "build_parser", "main", "storage_from_args"]

COMMANDS = (
    synth,
    ingest,
    stats,
    train,
    evaluate,
    index,
    evaluate_retrieval,
    serve,
    query,
    demo,
    bench,
    import_reben,
    reproduce_table,
)


def version() -> str:
    """`bigearth X.Y.Z (Ray ..., torch ..., Python ...)`: what a bug report needs, read without importing them."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as of

    def v(dist: str) -> str:
        try:
            return of(dist)
        except PackageNotFoundError:
            return "not installed"

    py = ".".join(map(str, sys.version_info[:3]))
    return f"bigearth {v('bigearth')} (Ray {v('ray')}, torch {v('torch')}, timm {v('timm')}, Python {py})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bigearth", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=version())
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add(sub)
    return parser


def job(command: str, argv: Sequence[str] | None = None) -> int:
    """`python jobs/<command>.py ...` (what the RayJobs run): `bigearth <command> ...`, `-v` accepted anywhere."""
    given = list(sys.argv[1:] if argv is None else argv)
    verbose = [a for a in given if a in ("-v", "--verbose")]
    return main([*verbose, command, *(a for a in given if a not in verbose)])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.verbose = args.verbose or os.environ.get("BIGEARTH_VERBOSE", "") not in ("", "0")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from bigearth.execution import raycluster

    raycluster.arm()
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        if raycluster.LOST is None:
            raise
        print(f"bigearth {args.command}: error: {raycluster.LOST}", file=sys.stderr)
        return raycluster.EXIT_CODE
    except ServiceError as e:
        print(f"bigearth {args.command}: {e}", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError, OSError) as e:
        if args.verbose:
            raise
        # Library errors name the file/field and what was expected: show them without a traceback.
        print(f"bigearth {args.command}: error: {redact_text(str(e))}", file=sys.stderr)
        return 2
