"""The `bigearth` command: synth, ingest, stats, bench, demo, serve, query. Thin: parse, call the library, print."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from bigearth.api import ServiceError
from bigearth.archive.layouts import list_layouts
from bigearth.storage import StorageOptions


def add_storage_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("object storage (defaults from the environment: AWS_*, BIGEARTH_S3_ENDPOINT)")
    g.add_argument("--s3-endpoint", help="S3 endpoint URL (MinIO, SeaweedFS, Ceph, ...)")
    g.add_argument("--s3-anon", action="store_true", help="anonymous access (public buckets)")
    g.add_argument("--s3-key", help="access key id")
    g.add_argument("--s3-secret", help="secret access key")
    g.add_argument("--s3-region", help="region name")


def storage_from_args(a: argparse.Namespace) -> StorageOptions:
    return StorageOptions.from_env(
        endpoint_url=a.s3_endpoint, anon=a.s3_anon or None, key=a.s3_key, secret=a.s3_secret, region=a.s3_region
    )


def add_ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--archive",
        required=True,
        help="archive root: local path or fsspec URL (s3://bucket/prefix, https://mirror/record): the extracted "
        "folders or the published downloads (*.tar.zst / *.tar.gz under their names, read as streams)",
    )
    p.add_argument("--out", required=True, help="shard set to write: local path or fsspec URL")
    p.add_argument("--layout", default="auto", choices=["auto", *list_layouts()], help="default: detected")
    p.add_argument("--lists", help="v1: folder with the official lists and splits (see docs/data-format.md)")
    p.add_argument(
        "--include-snow-cloud",
        action="store_true",
        help="keep patches with seasonal snow, cloud or shadow (excluded by default, as recommended)",
    )
    p.add_argument(
        "--include-no-19-labels",
        action="store_true",
        help="keep v1 patches with no 19-class label (excluded by default)",
    )
    p.add_argument("--patches", help="restrict to these S2 patch ids: a file with one id per line, or a comma list")
    p.add_argument("--limit", type=int, help="ingest at most this many pairs (after exclusions)")
    p.add_argument("--shard-size", type=int, default=1000, help="pairs per Parquet shard (default 1000)")
    p.add_argument(
        "--compression",
        default="lz4",
        choices=["lz4", "zstd", "none"],
        help="shard compression (default lz4: fastest to read; zstd: about half the bytes; see docs/benchmarks.md)",
    )
    p.add_argument("--concurrency", type=int, help="at most this many shard tasks at once (default: as many as CPUs)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the shard set --out holds first (refused for a folder that is not one bigearth ingest wrote)",
    )
    p.add_argument(
        "--staging",
        help="downloads only: where decompressed members wait for their shard, reachable by every node "
        "(default: OUT/_ingest/staged; needs about the downloads' uncompressed size)",
    )
    p.add_argument("--keep-staging", action="store_true", help="downloads only: keep the staged members at the end")
    add_storage_args(p)


def _patch_list(value: str | None) -> list[str] | None:
    if not value:
        return None
    if "," in value or value.startswith(("S2A_", "S2B_")):
        return [v.strip() for v in value.split(",") if v.strip()]
    with open(value) as f:
        return [line.strip() for line in f if line.strip()]


def run_ingest(a: argparse.Namespace) -> int:
    from bigearth.ingest import ingest

    m = ingest(
        a.archive,
        a.out,
        layout=a.layout,
        lists=a.lists,
        include_snow_cloud=a.include_snow_cloud,
        include_no_19_labels=a.include_no_19_labels,
        patches=_patch_list(a.patches),
        limit=a.limit,
        shard_size=a.shard_size,
        compression=a.compression,
        overwrite=a.overwrite,
        storage=storage_from_args(a),
        concurrency=a.concurrency,
        staging=a.staging,
        keep_staging=a.keep_staging,
    )
    if m.quarantined:
        print(f"quarantined pairs (first 20 of {len(m.quarantined)}; all in {a.out}/manifest.json):")
        for q in m.quarantined[:20]:
            print(f"  {q['patch_id']}: {q['reason']}")
    return 0


def run_synth(a: argparse.Namespace) -> int:
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


def run_stats(a: argparse.Namespace) -> int:
    from bigearth.stats import band_stats

    stats = band_stats(a.shards, a.split, storage_from_args(a))
    text = json.dumps(stats, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    print(text)
    return 0


def run_import_reben(a: argparse.Namespace) -> int:
    from bigearth.models import checkpoints
    from bigearth.models.reben import import_checkpoint

    bands = [b.strip() for b in a.bands.split(",")] if a.bands else None
    out = import_checkpoint(a.src, a.out, version=a.version, bands=bands, storage=storage_from_args(a))
    ref = checkpoints.resolve(out, storage=storage_from_args(a))
    spec = ref.spec
    print(json.dumps({"checkpoint": out, "model": ref.name, "bands": list(spec.bands), "stats": spec.stats}, indent=1))
    return 0


def run_reproduce_table(a: argparse.Namespace) -> int:
    from bigearth.reproduce import write_table

    print(write_table(a.eval_root, a.out, storage_from_args(a)), end="")
    return 0


def run_bench(a: argparse.Namespace) -> int:
    from bigearth.benchmark import bench_input

    result = bench_input(
        a.shards,
        a.split,
        a.batch_size,
        a.epochs,
        a.bands,
        storage_from_args(a),
        a.stem,
        path=a.path,
        shuffle_buffer=a.shuffle_buffer,
        threads=a.threads,
    )
    print(json.dumps(result))
    return 0


def run_demo(a: argparse.Namespace) -> int:
    from bigearth.demo import run_demo as demo

    demo(a.workdir, pairs=a.pairs, epochs=a.epochs, seed=a.seed, serve=a.serve, port=a.port, shared=a.shared)
    return 0


def _private_keys_file(keys: list[str]) -> str:
    """The keys in a file only this user can read: the replicas read it at start (keys are never Serve arguments)."""
    import tempfile

    fd, path = tempfile.mkstemp(prefix="bigearth-api-keys-", suffix=".txt")  # mode 0600
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(keys) + "\n")
    return path


def run_serve(a: argparse.Namespace) -> int:
    keys_file = a.api_keys_file or (_private_keys_file(a.api_keys) if a.api_keys else None)
    left_running = False
    try:
        code = _serve(a, keys_file)
        left_running = a.no_block  # the replicas read the keys file whenever one (re)starts: keep it
        return code
    finally:
        if keys_file and not a.api_keys_file and not left_running:
            os.unlink(keys_file)  # a failed start, Ctrl-C or a lost cluster: no key left behind in /tmp


def _serve(a: argparse.Namespace, keys_file: str | None) -> int:
    import time

    from ray import serve

    from bigearth import raycluster
    from bigearth.raycluster import ensure_ray
    from bigearth.serving.app import AppArgs, build

    args = AppArgs(
        checkpoint=a.checkpoint,
        index=a.index,
        data=a.data,
        collection=a.collection,
        classifier_replicas=a.replicas,
        max_batch_size=a.max_batch_size,
        replica_cpus=a.replica_cpus,
        api_keys_file=keys_file,
    )
    ensure_ray()
    serve.start(http_options={"host": a.host, "port": a.port, "request_timeout_s": 120})
    serve.run(build(args), name="bigearth", route_prefix="/")
    print(f"serving on http://{a.host}:{a.port} (OpenAPI: /docs); Ctrl-C stops", flush=True)
    if a.no_block:
        return 0
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        if raycluster.LOST:
            raise  # nothing to shut down: main() reports the lost cluster
        serve.shutdown()
    return 0


def run_query(a: argparse.Namespace) -> int:
    from bigearth.client import Client

    with Client(a.url, api_key=a.api_key, timeout=a.timeout) as c:
        if a.call == "classify":
            out: object = c.classify(*a.patch, patch_id=a.patch_id, threshold=a.threshold).model_dump()
        elif a.call == "search":
            flt = {
                k: v
                for k, v in {
                    "labels_any": a.labels_any,
                    "labels_all": a.labels_all,
                    "split": a.split,
                    "country": a.country,
                    "season": a.season,
                    "date_from": a.date_from,
                    "date_to": a.date_to,
                }.items()
                if v
            }
            res = c.search(
                *a.patch,
                patch_id=a.patch_id,
                k=a.k,
                using=a.using,
                query_modality=a.query_modality,
                filter=flt or None,
            )
            out = res.model_dump()
        elif a.call == "patch":
            out = c.patch(a.patch_id).model_dump()
        else:
            data = c.rgb(a.patch_id, scale=a.scale)
            with open(a.out, "wb") as f:
                f.write(data)
            out = {"written": a.out, "bytes": len(data)}
    print(json.dumps(out, indent=1, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bigearth", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

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
        help="write the published downloads (v2: *.tar.zst, one zstd frame each; v1: *.tar.gz) instead of folders",
    )
    p.add_argument("--reference-maps", action="store_true", help="v2: also write each patch's reference map")
    add_storage_args(p)
    p.set_defaults(func=run_synth)

    p = sub.add_parser("ingest", help="archive -> Parquet shards + manifest.json (a Ray Data job)")
    add_ingest_args(p)
    p.set_defaults(func=run_ingest)

    p = sub.add_parser("stats", help="per-band mean/std of a split, with Ray Data")
    p.add_argument("--shards", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--out", help="also write the JSON here")
    add_storage_args(p)
    p.set_defaults(func=run_stats)

    p = sub.add_parser("import-reben", help="an official reBEN (ConfigILM) checkpoint -> a bigearth checkpoint folder")
    p.add_argument("src", help="folder (or its model.safetensors) with config.json, local or URL")
    p.add_argument("out", help="checkpoint folder to write (local or URL)")
    p.add_argument("--version", default="v0.2.0", choices=["v0.2.0", "v0.1.1"], help="the band order it was trained on")
    p.add_argument("--bands", help="explicit channel order, comma-separated (overrides --version)")
    add_storage_args(p)
    p.set_defaults(func=run_import_reben)

    p = sub.add_parser(
        "reproduce-table", help="the reBEN model cards' test figures beside our evaluations (docs/reproduce.md)"
    )
    p.add_argument("eval_root", help="folder of <config name>/metrics.json (jobs/evaluate.py --out)")
    p.add_argument("--out", help="also write the Markdown table here")
    add_storage_args(p)
    p.set_defaults(func=run_reproduce_table)

    p = sub.add_parser("bench", help="benchmarks; `bench input` measures the training input pipeline")
    p.add_argument("what", choices=["input"])
    p.add_argument("--shards", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--bands", default="all")
    p.add_argument("--stem", action="store_true", help="also run the InputStem on each batch (CPU)")
    p.add_argument(
        "--path",
        default="rowgroups",
        choices=["rowgroups", "rows"],
        help="rowgroups: what training uses (bigearth.loader); rows: Ray Data's row path (open_split -> iter_torch)",
    )
    p.add_argument("--shuffle-buffer", type=int, default=2048, help="rows in the shuffle buffer (0 = off)")
    p.add_argument("--threads", type=int, help="reader threads of the rowgroups path (default: one per CPU)")
    add_storage_args(p)
    p.set_defaults(func=run_bench)

    p = sub.add_parser("demo", help="the whole platform on embedded defaults, end to end, with an HTML report")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--serve", action="store_true", help="keep the service running at the end (Ctrl-C stops)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--shared", help="the folder holding bigearthnet/real (default: $BIGEARTH_SHARED or ../shared)")
    p.set_defaults(func=run_demo)

    p = sub.add_parser("serve", help="run the classification + retrieval service locally (Ray Serve)")
    p.add_argument("--checkpoint", required=True, help="checkpoint or run folder")
    p.add_argument("--index", required=True, help="embedded-engine folder or http(s):// Qdrant URL")
    p.add_argument("--data", required=True, help="the shard set")
    p.add_argument("--collection", default="bigearthnet")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1, help="classifier replicas")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--replica-cpus", type=float, default=1.0)
    p.add_argument("--api-keys", nargs="*", help="require one of these in X-API-Key (also $BIGEARTH_API_KEYS)")
    p.add_argument("--api-keys-file", help="file of accepted keys, one per line (a mounted secret)")
    p.add_argument("--no-block", action="store_true", help="return once deployed (the service stays up in Ray)")
    p.set_defaults(func=run_serve)

    p = sub.add_parser("query", help="call a running service (classify, search, patch, rgb)")
    p.add_argument("--url", default=None, help="service URL (default: $BIGEARTH_URL or http://127.0.0.1:8000)")
    p.add_argument("--api-key", default=None, help="default: $BIGEARTH_API_KEY")
    p.add_argument("--timeout", type=float, default=60.0)
    q = p.add_subparsers(dest="call", required=True)
    c = q.add_parser("classify", help="classify band folders/files, or --patch-id")
    c.add_argument("patch", nargs="*", help="band GeoTIFF folders or files (S2 and S1 of one pair)")
    c.add_argument("--patch-id")
    c.add_argument("--threshold", type=float)
    c = q.add_parser("search", help="similar pairs to --patch-id or to uploaded band folders")
    c.add_argument("patch", nargs="*")
    c.add_argument("--patch-id")
    c.add_argument("--k", type=int, default=10)
    c.add_argument("--using", default="fused", choices=["fused", "s1", "s2"])
    c.add_argument("--query-modality", choices=["fused", "s1", "s2"])
    c.add_argument("--labels-any", nargs="+")
    c.add_argument("--labels-all", nargs="+")
    c.add_argument("--split", nargs="+")
    c.add_argument("--country", nargs="+")
    c.add_argument("--season", nargs="+")
    c.add_argument("--date-from")
    c.add_argument("--date-to")
    c = q.add_parser("patch", help="metadata of an archived pair")
    c.add_argument("patch_id")
    c = q.add_parser("rgb", help="true-colour quicklook PNG of an archived pair")
    c.add_argument("patch_id")
    c.add_argument("--out", required=True)
    c.add_argument("--scale", type=int, default=1)
    p.set_defaults(func=run_query)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from bigearth import raycluster

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
        print(f"bigearth {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
