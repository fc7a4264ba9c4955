"""Benchmark: what holds every pair's metadata at once, built at the archive's full count (no pixels needed).

    python bench/metadata_scale.py [--metadata ../shared/bigearthnet/lists/v2/metadata.parquet]
                                   [--work .bench/metadata] [--out bench/results/metadata-549k.json] [--limit N]

From the real v2 metadata (480,038 pairs, and the 69,450 of the snow/cloud file beside it: 549,488), each object
is built in a fresh process, through the public functions, and its time and memory reported (the process's peak
RSS above what it held after its imports, and Arrow's own allocation where the object is Arrow):
  catalogue   bigearth.archive.catalogue.build_catalogue over a v2 folder holding only the metadata files
  plan        bigearth.ingest.job.plan_shards of that catalogue (1000 pairs a shard)
  manifest    a Manifest listing those shards (Manifest.save), then read back (Manifest.load) in a fresh process:
              what every training worker, evaluator and replica does; its size on disk
  ingest      `bigearth ingest --executor local` of the metadata-only folder (every pair missing): the case
              the issue found (time, peak RSS, manifest size)
  facets      the embedded index holding every pair's payload (tiny vectors), then the explorer's facets (split,
              country, season, labels; what GET /v1/facets computes) in a fresh process that opens it
`--limit` builds the same objects from the first N pairs (a smaller count, to compare growth).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
METADATA = REPO.parent / "shared" / "bigearthnet" / "lists" / "v2" / "metadata.parquet"
OBJECTS = ("catalogue", "plan", "manifest", "manifest_load", "ingest", "facets_build", "facets")


def _kb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return float(line.split()[1])
    return 0.0


class Measure:
    """Wall time and memory of a block: RSS at the start, the process's peak RSS at the end (VmHWM), Arrow's pool."""

    def __enter__(self) -> Measure:
        import pyarrow as pa

        self.rss0 = _kb("VmRSS:") / 1024
        self.arrow0 = pa.total_allocated_bytes()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        import pyarrow as pa

        self.seconds = time.perf_counter() - self.t0
        self.peak_mb = _kb("VmHWM:") / 1024
        self.rss_mb = _kb("VmRSS:") / 1024
        self.arrow_mb = (pa.total_allocated_bytes() - self.arrow0) / 2**20

    def record(self, **more: Any) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "rss_before_mb": round(self.rss0, 1),
            "peak_rss_mb": round(self.peak_mb, 1),
            "peak_above_start_mb": round(self.peak_mb - self.rss0, 1),
            "held_after_mb": round(self.rss_mb - self.rss0, 1),
            "arrow_held_mb": round(self.arrow_mb, 1),
            **more,
        }


def metadata_folder(work: Path, metadata: str, limit: int | None) -> Path:
    """A v2 archive folder holding only the metadata files (the first `limit` pairs of each when given)."""
    import pyarrow.parquet as pq

    from bigearth.archive.metadata import V2_METADATA, V2_SNOW_CLOUD_METADATA

    folder = work / f"v2-metadata-{limit or 'full'}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in (V2_METADATA, V2_SNOW_CLOUD_METADATA):
        src = Path(metadata).with_name(name)
        if not src.exists():
            continue
        dst = folder / name
        if dst.exists():
            continue
        if limit is None:
            dst.symlink_to(src.resolve())
        else:
            table = pq.read_table(src)
            pq.write_table(table.slice(0, limit), dst)
    return folder


def _catalogue(folder: Path) -> Any:
    from bigearth.archive.catalogue import build_catalogue

    return build_catalogue(str(folder), include_snow_cloud=True)


def one(obj: str, folder: Path, work: Path) -> dict[str, Any]:
    """Build `obj` in this (fresh) process; its figures."""
    import bigearth.archive.catalogue
    import bigearth.ingest.job
    import bigearth.shards.format

    if obj == "catalogue":
        with Measure() as m:
            cat = _catalogue(folder)
        return m.record(pairs=len(cat), total=cat.total)
    if obj == "plan":
        cat = _catalogue(folder)
        with Measure() as m:
            plans = bigearth.ingest.job.plan_shards(cat.pairs, 1000)
        return m.record(pairs=len(cat), shards=len(plans))
    if obj == "manifest":
        from bigearth.core.storage import open_fs
        from bigearth.shards.format import Manifest, ShardEntry

        cat = _catalogue(folder)
        plans = bigearth.ingest.job.plan_shards(cat.pairs, 1000)
        shards = [(p.path, p.split, p.pairs.num_rows) for p in plans]
        del plans
        out = work / "manifest"
        out.mkdir(exist_ok=True)
        with Measure() as m:
            splits: dict[str, int] = {}
            for _, split, rows in shards:
                splits[split] = splits.get(split, 0) + rows
            man = Manifest(
                pairs=len(cat),
                splits=splits,
                shards=[ShardEntry(path, split, rows) for path, split, rows in shards],
                excluded=dict(cat.excluded_counts),
                source={"archive": str(folder), "layout": cat.version, "catalogue_pairs": cat.total},
            )
            fs, root = open_fs(str(out))
            man.save(fs, root)
        return m.record(pairs=len(cat), shards=len(shards), bytes=(out / "manifest.json").stat().st_size)
    if obj == "manifest_load":
        from bigearth.core.storage import open_fs
        from bigearth.shards.format import Manifest

        fs, root = open_fs(str(work / "manifest"))
        with Measure() as m:
            man = Manifest.load(fs, root)
        return m.record(pairs=man.pairs, shards=len(man.shards))
    if obj == "ingest":
        out = work / "ingest-out"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "bigearth.cli", "ingest", "--archive", str(folder), "--out", str(out)]
        cmd += ["--include-snow-cloud", "--executor", "local"]
        t0 = time.perf_counter()
        done = subprocess.run(
            ["/usr/bin/time", "-f", "MAXRSS %M", *cmd], capture_output=True, text=True, env=_env(), cwd=REPO
        )
        seconds = time.perf_counter() - t0
        peak = next((int(x.split()[1]) / 1024 for x in done.stderr.splitlines() if x.startswith("MAXRSS")), 0.0)
        manifest = out / "manifest.json"
        size = manifest.stat().st_size if manifest.exists() else 0
        result = {"seconds": round(seconds, 3), "peak_rss_mb": round(peak, 1), "manifest_bytes": size}
        result["exit"] = done.returncode
        result["last_lines"] = done.stdout.splitlines()[-3:] + done.stderr.splitlines()[-3:]
        shutil.rmtree(out, ignore_errors=True)
        return result
    if obj == "facets_build":
        return build_index(folder, work)
    if obj == "facets":
        from bigearth.retrieval.backends import open_index

        with Measure() as m:
            index = open_index(str(work / "index"))
            facets = {key: index.facet(key, limit=1000) for key in ("split", "country", "season", "labels")}
            index.close()
        return m.record(points=sum(facets["split"].values()), values={k: len(v) for k, v in facets.items()})
    raise ValueError(f"unknown object {obj!r}; one of {OBJECTS}")


def build_index(folder: Path, work: Path) -> dict[str, Any]:
    """The embedded index with every catalogue pair's payload (as the indexer writes it) and 8-d random vectors."""
    import numpy as np

    from bigearth.retrieval.backends import open_index
    from bigearth.retrieval.schema import flags, season

    cat = _catalogue(folder)
    shutil.rmtree(work / "index", ignore_errors=True)
    rng = np.random.default_rng(0)
    with Measure() as m:
        index = open_index(str(work / "index"))
        builder = index.rebuild({"s2": 8}, {"model": "bench"})
        batch = 4096
        for start in range(0, cat.pairs.num_rows, batch):
            rows = cat.pairs.slice(start, batch).to_pylist()
            pls = []
            for r in rows:
                date = r["patch_id"].split("_")[2]  # S2A_MSIL2A_20170613T101031_...: the acquisition
                p = {
                    "patch_id": r["patch_id"],
                    "s1_name": r["s1_name"],
                    "labels": list(r["labels"]),
                    "split": r["split"] or "unassigned",
                    "country": r["country"],
                    "tile": r["patch_id"].split("_")[-3],
                    "date": f"{date[:4]}-{date[4:6]}-{date[6:8]}T00:00:00Z",
                    "season": season(int(date[4:6])),
                    "location": {"lat": 50.0, "lon": 10.0},
                    "snow": bool(r["contains_seasonal_snow"]),
                    "cloud": bool(r["contains_cloud_or_shadow"]),
                }
                p["flags"] = flags(p)
                pls.append(p)
            ids = [r["patch_id"] for r in rows]
            builder.upsert(ids, {"s2": rng.standard_normal((len(ids), 8)).astype(np.float32)}, pls)
        builder.publish()
        builder.close()
    return m.record(points=cat.pairs.num_rows)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "platform"), "RAY_AUTH_MODE": "disabled"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metadata", default=str(METADATA))
    ap.add_argument("--work", default=".bench/metadata")
    ap.add_argument("--out", default="bench/results/metadata-549k.json")
    ap.add_argument("--limit", type=int, help="the first N pairs of each metadata file instead of all")
    ap.add_argument("--objects", default=",".join(OBJECTS), help=f"comma list of {', '.join(OBJECTS)}")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # the fresh process building one object
    a = ap.parse_args()
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "platform"))
    folder = metadata_folder(work, a.metadata, a.limit)
    if a.one:
        print(json.dumps(one(a.one, folder, work)))
        return 0
    results: dict[str, Any] = {}
    for obj in a.objects.split(","):
        cmd = [sys.executable, __file__, "--one", obj, "--metadata", a.metadata, "--work", str(work)]
        cmd += ["--limit", str(a.limit)] if a.limit else []
        done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO)
        if done.returncode:
            results[obj] = {"error": done.stderr.strip().splitlines()[-3:]}
        else:
            results[obj] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{obj:14s} {json.dumps(results[obj])}", flush=True)
    doc = {"command": " ".join(["python", "bench/metadata_scale.py", *sys.argv[1:]]), "limit": a.limit, **results}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1))
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
