"""`bigearth demo`: the whole platform on embedded defaults, end to end, with an HTML report."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="the whole platform on embedded defaults, end to end, with an HTML report")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--serve", action="store_true", help="keep the service running at the end (Ctrl-C stops)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--shared", help="the folder holding bigearthnet/real (default: $BIGEARTH_SHARED or ../shared)")
    p.add_argument("--config", help="the model and recipe (default: the repository's configs/tiny-cpu.yaml)")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from bigearth.demo.run import run_demo

    run_demo(a.workdir, a.pairs, a.epochs, a.seed, a.serve, a.port, a.shared, config=a.config)
    return 0
