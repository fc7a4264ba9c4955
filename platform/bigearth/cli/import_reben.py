"""`bigearth import-reben`: an official reBEN (ConfigILM) checkpoint -> a bigearth checkpoint folder."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from bigearth.cli.common import add_storage_args, storage_from_args
from bigearth.core.outputlock import BREAK_LOCK_HELP


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("import-reben", help="an official reBEN (ConfigILM) checkpoint -> a bigearth checkpoint folder")
    p.add_argument("src", help="folder (or its model.safetensors) with config.json, local or URL")
    p.add_argument("out", help="checkpoint folder to write (local or URL)")
    p.add_argument("--version", default="v0.2.0", choices=["v0.2.0", "v0.1.1"], help="the band order it was trained on")
    p.add_argument("--bands", help="explicit channel order, comma-separated (overrides --version)")
    p.add_argument("--break-lock", action="store_true", help=BREAK_LOCK_HELP)
    add_storage_args(p)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    """OUT is locked while it is written (bigearth.core.outputlock)."""
    from bigearth.core.outputlock import OutputLock

    with OutputLock(a.out, "import-reben", storage_from_args(a), break_lock=a.break_lock) as lock:
        return _import(a, lock.verify)  # a lock taken over meanwhile: stop before meta.json


def _import(a: argparse.Namespace, before_commit: Callable[[], None] | None = None) -> int:
    from bigearth.models import checkpoints
    from bigearth.models.reben import import_checkpoint

    bands = [b.strip() for b in a.bands.split(",")] if a.bands else None
    out = import_checkpoint(
        a.src, a.out, version=a.version, bands=bands, storage=storage_from_args(a), before_commit=before_commit
    )
    ref = checkpoints.resolve(out, storage=storage_from_args(a))
    spec = ref.spec
    print(json.dumps({"checkpoint": out, "model": ref.name, "bands": list(spec.bands), "stats": spec.stats}, indent=1))
    return 0
