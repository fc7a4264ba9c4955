"""`bigearth reproduce-table`: the reBEN model cards' test figures beside our evaluations."""

from __future__ import annotations

import argparse

from bigearth.cli.common import add_storage_args, storage_from_args


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "reproduce-table", help="the reBEN model cards' test figures beside our evaluations (docs/reproduce.md)"
    )
    p.add_argument("eval_root", help="folder of <config name>/metrics.json (jobs/evaluate.py --out)")
    p.add_argument("--out", help="also write the Markdown table here")
    add_storage_args(p)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from bigearth.evaluation.reproduce import write_table

    print(write_table(a.eval_root, a.out, storage_from_args(a)), end="")
    return 0
