"""Ingest of synthetic archives: bit-exact shards, manifest, exact quarantine of planted faults, resume."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bigearth.archive import geotiff
from bigearth.archive.layouts import layout_for
from bigearth.core.storage import open_fs
from bigearth.ingest.job import IngestError, ingest
from bigearth.shards.format import Manifest, ShardFormatError
from helpers import kill_cli_ingest, quarantined

pytestmark = pytest.mark.usefixtures("ray_local")


def _rows(shards: Path) -> list[dict]:  # type: ignore[type-arg]
    m = Manifest.load(*open_fs(str(shards)))
    return [r for s in m.shards for r in pq.read_table(shards / s.path).to_pylist()]


def test_rerun_is_idempotent(shards_v2: Path, synth_v2: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in shards_v2.rglob("part-*.parquet")}
    again = ingest(str(synth_v2), str(shards_v2), shard_size=30)
    assert again.pairs == Manifest.load(*open_fs(str(shards_v2))).pairs
    assert {p: p.stat().st_mtime_ns for p in shards_v2.rglob("part-*.parquet")} == before  # nothing rewritten


def _rewrite(path: str, array: np.ndarray, like: geotiff.Raster, **kw) -> None:  # type: ignore[no-untyped-def]
    Path(path).write_bytes(geotiff.encode(array, like.epsg, like.ulx, like.uly, like.res, **kw))


def test_planted_faults_are_quarantined_exactly(synth_v2: Path, archive_copy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = archive_copy(synth_v2)
    lay = layout_for("v2", str(root))
    meta_path = root / "metadata.parquet"
    table = pq.read_table(meta_path)
    rows = table.to_pylist()
    victims = {
        kind: rows[i]
        for i, kind in enumerate(
            [
                "missing_file",
                "corrupt_file",
                "wrong_shape",
                "wrong_dtype",
                "missing_s1",
                "unknown_label",
                "non_finite",
                "georef_mismatch",
                "missing_s1_vh",
            ]
        )
    }
    expected: dict[str, tuple[str, str]] = {}

    v = victims["missing_file"]
    p = lay.s2_band(v["patch_id"], "B05")
    os.remove(p)
    expected[v["patch_id"]] = ("missing_file", f"missing file: {p}")

    v = victims["corrupt_file"]
    p = lay.s2_band(v["patch_id"], "B02")
    Path(p).write_bytes(Path(p).read_bytes()[:100])
    expected[v["patch_id"]] = ("corrupt_file", f"{p}: not a readable GeoTIFF")

    v = victims["wrong_shape"]
    p = lay.s2_band(v["patch_id"], "B03")
    r = geotiff.read_file(p)
    _rewrite(p, r.array[:60, :60].copy(), r)
    expected[v["patch_id"]] = ("wrong_shape", f"{p}: expected 120x120 pixels for B03, got 60x60")

    v = victims["wrong_dtype"]
    p = lay.s2_band(v["patch_id"], "B04")
    r = geotiff.read_file(p)
    _rewrite(p, r.array.astype(np.float32), r)
    expected[v["patch_id"]] = ("wrong_dtype", f"{p}: expected uint16 for B04, got float32")

    v = victims["missing_s1"]
    d = lay.s1_dir(v["s1_name"])
    for f in Path(d).iterdir():
        f.unlink()
    Path(d).rmdir()
    expected[v["patch_id"]] = (
        "missing_s1",
        f"missing S1 partner {v['s1_name']}: neither "
        f"{lay.s1_band(v['s1_name'], 'VV')} nor {lay.s1_band(v['s1_name'], 'VH')} exists",
    )

    v = victims["missing_s1_vh"]
    p = lay.s1_band(v["s1_name"], "VH")
    os.remove(p)
    expected[v["patch_id"]] = ("missing_file", f"missing file: {p}")

    v = victims["unknown_label"]
    for r_ in rows:
        if r_["patch_id"] == v["patch_id"]:
            r_["labels"] = ["Urban fabric", "Glaciers and perpetual snow"]
    expected[v["patch_id"]] = (
        "unknown_label",
        f"{v['patch_id']}: unknown 19-class label 'Glaciers and perpetual snow' in metadata.parquet",
    )

    v = victims["non_finite"]
    p = lay.s1_band(v["s1_name"], "VV")
    r = geotiff.read_file(p)
    arr = r.array.copy()
    arr[3, 4], arr[5, 6] = np.nan, np.inf
    _rewrite(p, arr, r)
    expected[v["patch_id"]] = ("non_finite", f"{p}: 2 non-finite value(s) (NaN/inf) in VV")

    v = victims["georef_mismatch"]
    p = lay.s1_band(v["s1_name"], "VH")
    r = geotiff.read_file(p)
    Path(p).write_bytes(geotiff.encode(r.array, r.epsg, r.ulx + 1200, r.uly, r.res))
    expected[v["patch_id"]] = (
        "georef_mismatch",
        f"{p}: S1 CRS/upper-left corner EPSG {r.epsg} {r.ulx + 1200}/"
        f"{r.uly} differs from the S2 patch's EPSG {r.epsg} {r.ulx}/{r.uly}",
    )

    pq.write_table(pq.read_table(meta_path).from_pylist(rows, schema=table.schema), meta_path)
    out = tmp_path / "shards"
    m = ingest(str(root), str(out), shard_size=25)
    got = {q["patch_id"]: (q["kind"], q["reason"]) for q in quarantined(out)}
    assert m.quarantined_pairs == len(got)
    assert set(got) == set(expected)
    for pid, (kind, reason) in expected.items():
        assert got[pid][0] == kind, pid
        assert got[pid][1].startswith(reason), (got[pid][1], reason)
    assert m.pairs == len(rows) - len(expected)
    assert sorted(r["patch_id"] for r in _rows(out)) == sorted(set(table["patch_id"].to_pylist()) - set(expected))


def test_v1_json_faults(synth_v1: Path, archive_copy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = archive_copy(synth_v1)
    lay = layout_for("v1", str(root))
    train = (root / "lists" / "train.csv").read_text().splitlines()
    (a, _a1), (b, _b1), (c, _c1) = (line.split(",") for line in train[:3])
    doc = json.loads(Path(lay.s2_json(a)).read_text())  # type: ignore[arg-type]
    doc["labels"] = [*doc["labels"], "Tundra"]
    Path(lay.s2_json(a)).write_text(json.dumps(doc))  # type: ignore[arg-type]
    Path(lay.s2_json(b)).write_text("{not json")  # type: ignore[arg-type]
    os.remove(lay.s2_json(c))  # type: ignore[arg-type]
    m = ingest(str(root), str(tmp_path / "out"), lists=str(root / "lists"), shard_size=40)
    got = {q["patch_id"]: (q["kind"], q["reason"]) for q in quarantined(tmp_path / "out")}
    assert m.quarantined_pairs == len(got)
    assert got[a] == ("unknown_label", f"{lay.s2_json(a)}: unknown 43-class label 'Tundra'")
    assert got[b][0] == "bad_metadata" and got[b][1].startswith(f"{lay.s2_json(b)}: not valid JSON")
    assert got[c] == ("missing_file", f"missing file: {lay.s2_json(c)}")
    assert len(got) == 3


def test_v1_ingest_labels_and_policy(synth_v1: Path, tmp_path: Path) -> None:
    lists = synth_v1 / "lists"
    m = ingest(str(synth_v1), str(tmp_path / "v1"), lists=str(lists), shard_size=50)
    n_listed = {
        name: len((lists / f).read_text().splitlines())
        for name, f in [("train", "train.csv"), ("validation", "val.csv"), ("test", "test.csv")]
    }
    assert m.splits == {k: v for k, v in n_listed.items() if v} and m.quarantined_pairs == 0
    snow = len((lists / "patches_with_seasonal_snow.csv").read_text().splitlines())
    assert m.excluded["seasonal_snow"] == snow
    assert m.pairs + sum(m.excluded.values()) == 120
    from bigearth.core import labels as lab

    for row in _rows(tmp_path / "v1"):
        assert row["labels"] == lab.convert_43_to_19(row["labels43"]) and row["labels"]
        assert row["s2_acquisition"] is not None and row["country"] is None
    everything = ingest(
        str(synth_v1),
        str(tmp_path / "all"),
        lists=str(lists),
        include_snow_cloud=True,
        include_no_19_labels=True,
        shard_size=200,
    )
    assert everything.pairs == 120 and sum(everything.excluded.values()) == 0
    assert "unassigned" in everything.splits  # snowy / cloudy v1 patches are outside the official splits


@pytest.mark.slow
def test_killed_ingest_resumes_without_duplicates_or_losses(synth_v2: Path, tmp_path: Path) -> None:
    out = tmp_path / "resume"
    reports = kill_cli_ingest(synth_v2, out, shard_size=8, reports=3, timeout=120)
    done = {p: p.stat().st_mtime_ns for p in reports}
    assert 3 <= len(done) < 12 and not (out / "manifest.json").exists()

    m = ingest(str(synth_v2), str(out), shard_size=8)
    ids = [r["patch_id"] for r in _rows(out)]
    meta = pq.read_table(synth_v2 / "metadata.parquet")["patch_id"].to_pylist()
    assert len(ids) == len(set(ids)) == m.pairs == len(meta)
    assert sorted(ids) == sorted(meta)
    for p, mtime in done.items():  # finished shards were not redone
        assert p.stat().st_mtime_ns == mtime


def test_cut_records_are_redone_and_a_held_output_is_refused(synth_v2: Path, shards_v2: Path, tmp_path: Path) -> None:
    """A shard report and the manifest cut short (an older writer killed mid-write): the re-run names them, redoes
    that shard alone and writes the manifest again. Another writer's lock on the output: refused, naming it."""
    import shutil

    from bigearth.core.outputlock import LOCK_FILE, OutputLocked

    out = tmp_path / "cut"
    shutil.copytree(shards_v2, out)
    report = out / "_ingest" / "reports" / "train" / "part-00001.json"
    shard = out / "train" / "part-00001.parquet"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("part-*.parquet")}
    report.write_bytes(report.read_bytes()[:25])
    (out / "manifest.json").write_bytes((out / "manifest.json").read_bytes()[:40])
    with pytest.raises(ShardFormatError, match=r"manifest\.json: the shard set's manifest is unreadable"):
        Manifest.load(*open_fs(str(out)))

    again = ingest(str(synth_v2), str(out), shard_size=30)
    assert again == Manifest.load(*open_fs(str(shards_v2)))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("part-*.parquet") if p != shard} == {
        p: t for p, t in before.items() if p != shard
    }
    assert shard.stat().st_mtime_ns != before[shard]  # redone, and only it
    assert not (out / LOCK_FILE).exists()

    now = datetime.now(UTC).isoformat()
    holder = {"job": "ingest", "host": "elsewhere", "pid": 7, "started": "2026-01-01T10:00:00+00:00", "heartbeat": now}
    (out / LOCK_FILE).write_text(json.dumps(holder))
    with pytest.raises(OutputLocked, match=r"is being written by ingest on elsewhere \(pid 7\), started 2026-01-01"):
        ingest(str(synth_v2), str(out), shard_size=30)


def test_overwrite_deletes_only_a_shard_set_of_ours(synth_v2: Path, shards_v2: Path, tmp_path: Path) -> None:
    import shutil

    home = tmp_path / "home"  # a typo'd --out: somebody's folder
    (home / "thesis").mkdir(parents=True)
    (home / "thesis" / "chapter1.tex").write_text("years of work")
    with pytest.raises(IngestError, match=r"not a shard set written by bigearth ingest.*nothing deleted"):
        ingest(str(synth_v2), str(home), shard_size=30, overwrite=True)
    assert (home / "thesis" / "chapter1.tex").read_text() == "years of work"

    ours = tmp_path / "ours"
    shutil.copytree(shards_v2, ours)
    (ours / "train" / "notes.txt").write_text("mine")  # something else put inside a shard set
    with pytest.raises(IngestError, match=r"holds 'train', which bigearth ingest does not write"):
        ingest(str(synth_v2), str(ours), shard_size=30, overwrite=True)
    assert (ours / "train" / "notes.txt").exists() and (ours / "manifest.json").exists()
    (ours / "train" / "notes.txt").unlink()
    (ours / "train" / "part-00000.parquet").write_bytes(b"stale")  # ours, however broken: replaced
    ingest(str(synth_v2), str(ours), shard_size=30, overwrite=True)
    assert Manifest.load(*open_fs(str(ours))).splits == Manifest.load(*open_fs(str(shards_v2))).splits
    assert pq.read_metadata(ours / "train" / "part-00000.parquet").num_rows > 0


def test_the_ray_executor_writes_the_same_shard_set_as_the_local_one(
    synth_v2: Path, shards_v2: Path, tmp_path: Path
) -> None:
    """`shards_v2` is ingested in-process (LocalExecutor); the default executor (a Ray Data task per shard) writes
    the same files, byte for byte: shards, reports, plan, manifest and exclusions."""
    from bigearth.execution.executors import RayExecutor

    out = tmp_path / "ray"
    ingest(str(synth_v2), str(out), shard_size=30, executor=RayExecutor(), progress=False)

    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    local, ray_made = tree(shards_v2), tree(out)
    assert sorted(ray_made) == sorted(local)
    assert [k for k in local if local[k] != ray_made[k]] == []
