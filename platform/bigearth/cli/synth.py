"""`bigearth synth`: a synthetic archive in the real v1 or v2 format."""

from __future__ import annotations

import argparse

from bigearth.cli.common import add_storage_args, storage_from_args


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("synth", help="write a synthetic archive in the real v1 or v2 format")
    p.add_argument("--layout", choices=["v1", "v2"], default="v2")
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--metadata", help="the real v2 metadata.parquet: take real ids, labels, splits, countries")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")
    p.add_argument(
        "--packed",
        action="store_true",
        help="write the published downloads (v2: *.tar.zst, one zstd frame each; v1: *.tar.gz) instead of folders, "
        "with an MD5SUMS file beside them (ingest them with --trust-md5sums: their digests are not the published "
        "ones)",
    )
    p.add_argument("--reference-maps", action="store_true", help="v2: also write each patch's reference map")
    add_storage_args(p)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from bigearth.synth.archive import synthesize

    r = synthesize(
        a.out,
        layout=a.layout,
        pairs=a.pairs,
        seed=a.seed,
        metadata=a.metadata,
        storage=storage_from_args(a),
        workers=a.workers,
        packed=a.packed,
        reference_maps=a.reference_maps,
    )
    print(
        f"synth: wrote {r.pairs} {r.layout} pairs to {r.out}{' as the published downloads' if a.packed else ''}"
        + (f"; official-format lists in {r.lists}" if r.lists else "")
    )
    return 0
