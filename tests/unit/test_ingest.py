"""The ingested shard set (`shards_v2`, written in this process by the local executor): bit-exact shards, the
manifest, the format metadata; a different ingest into it is refused before any work (the Ray ingests, planted
faults, resume: tests/integration/test_ingest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio

from bigearth.archive.layouts import layout_for
from bigearth.core.bands import ALL_BANDS
from bigearth.core.labels import BEN19
from bigearth.core.storage import open_fs
from bigearth.ingest.job import IngestError, ingest
from bigearth.shards.codecs import compression_for
from bigearth.shards.format import SHARD_SCHEMA, Manifest


def _rows(shards: Path) -> list[dict]:  # type: ignore[type-arg]
    m = Manifest.load(*open_fs(str(shards)))
    return [r for s in m.shards for r in pq.read_table(shards / s.path).to_pylist()]


def test_shards_are_bit_exact_and_complete(synth_v2: Path, shards_v2: Path) -> None:
    m = Manifest.load(*open_fs(str(shards_v2)))
    meta = pq.read_table(synth_v2 / "metadata.parquet")
    assert m.pairs == meta.num_rows and m.quarantined_pairs == 0  # the default policy keeps metadata.parquet only
    extra = pq.read_table(synth_v2 / "metadata_for_patches_with_snow_cloud_or_shadow.parquet")
    flags = extra.to_pydict()
    assert m.excluded == {
        "seasonal_snow": sum(flags["contains_seasonal_snow"]),
        "cloud_or_shadow": sum(flags["contains_cloud_or_shadow"]),
        "no_19_class_label": 0,
    }
    assert sum(m.splits.values()) == m.pairs == sum(s.rows for s in m.shards)
    rows = _rows(shards_v2)
    assert sorted(r["patch_id"] for r in rows) == sorted(meta["patch_id"].to_pylist())
    layout = layout_for("v2", str(synth_v2))
    by_id = {r["patch_id"]: r for r in meta.to_pylist()}
    for row in rows[:: max(1, len(rows) // 10)]:
        src = by_id[row["patch_id"]]
        assert row["labels"] == sorted(src["labels"], key=BEN19.index)  # official order, not alphabetical
        assert row["split"] == src["split"] and row["s1_name"] == src["s1_name"]
        for band in ALL_BANDS:
            path = (
                layout.s2_band(row["patch_id"], band.name)
                if band.sensor == "s2"
                else layout.s1_band(row["s1_name"], band.name)
            )
            with rasterio.open(path) as ds:
                expected = ds.read(1)
                assert (row["epsg"], row["ulx"], row["uly"]) == (ds.crs.to_epsg(), ds.transform.c, ds.transform.f)
            got = np.frombuffer(row[band.name], dtype=np.dtype(band.dtype).newbyteorder("<")).reshape(band.shape)
            assert got.dtype == expected.dtype and np.array_equal(got, expected), (row["patch_id"], band.name)


def test_shard_files_carry_format_metadata(shards_v2: Path) -> None:
    m = Manifest.load(*open_fs(str(shards_v2)))
    for s in m.shards:
        pf = pq.ParquetFile(shards_v2 / s.path)
        assert pf.schema_arrow.equals(SHARD_SCHEMA, check_metadata=False)
        meta = pf.schema_arrow.metadata
        # the default codec where the set is written (`compression_for`: uncompressed pages on a local disk)
        codec = compression_for(str(shards_v2))
        assert meta[b"bigearth.format_version"] == b"2" and meta[b"bigearth.compression"] == codec.encode()
        bands = json.loads(meta[b"bigearth.bands"])
        assert bands["B01"] == {"shape": [20, 20], "dtype": "uint16", "gsd": 60}
        assert bands["VV"]["dtype"] == "float32"
        assert pf.metadata.row_group(0).column(0).compression == {"none": "UNCOMPRESSED", "zstd": "ZSTD"}[codec]
        assert s.rows <= 30 and s.path.startswith(s.split + "/")


def test_different_ingest_into_same_out_is_refused(shards_v2: Path, synth_v2: Path) -> None:
    with pytest.raises(IngestError, match="holds a different ingest"):
        ingest(str(synth_v2), str(shards_v2), shard_size=30, include_snow_cloud=True)


def test_a_shard_task_that_fails_or_finishes_second_leaves_the_shard_as_it_was(
    synth_v2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard task run again while its first copy still runs (a node cut off from the cluster, not from the
    volume): a copy that fails part-way puts nothing at the shard's path, and a copy that finds the shard's report
    written meanwhile (the other copy finished) leaves that copy's shard and report as they are."""
    import bigearth.ingest.job as job
    import bigearth.ingest.shard as one_shard
    from helpers import ingest_in_process

    out = tmp_path / "out"
    ingest_in_process(synth_v2, out, shard_size=40)
    shard = out / "train" / "part-00000.parquet"
    report = out / one_shard.STATE_DIR / "reports" / "train" / "part-00000.json"
    good, good_report = shard.read_bytes(), report.read_text()
    reads = one_shard.read_pairs

    def fails_on_the_second_batch(reader, lay, batch, *args):  # type: ignore[no-untyped-def]
        if batch[0] is not first_batch[0]:
            raise OSError("the archive's volume went away")
        return reads(reader, lay, batch, *args)

    def the_other_copy_finishes_meanwhile(reader, lay, batch, *args):  # type: ignore[no-untyped-def]
        report.write_text(good_report)  # the other copy's report lands while this one still reads
        return reads(reader, lay, batch, *args)

    monkeypatch.setattr(one_shard, "READ_BATCH", 8)  # several batches in the shard
    plan = next(p for p in job.plan_shards(job.build_catalogue(str(synth_v2)).pairs, 40) if p.split == "train")
    first_batch = plan.rows[: one_shard.READ_BATCH]
    assert len(plan.rows) > one_shard.READ_BATCH  # a second batch to fail on
    args = {"layout": "v2", "archive": str(synth_v2), "out": str(out), "storage": job.StorageOptions()}

    report.unlink()
    shard.unlink()
    monkeypatch.setattr(one_shard, "read_pairs", fails_on_the_second_batch)
    with pytest.raises(OSError, match="went away"):
        one_shard.ingest_shard(plan, include_no_19=False, **args)  # type: ignore[arg-type]
    assert not shard.exists() and not report.exists()  # nothing of the failed copy at the shard's path

    shard.write_bytes(good)  # the other copy's shard, its report not yet written
    monkeypatch.setattr(one_shard, "read_pairs", the_other_copy_finishes_meanwhile)
    finished = one_shard.ingest_shard(plan, include_no_19=False, **args)  # type: ignore[arg-type]
    assert finished == json.loads(good_report)
    assert shard.read_bytes() == good  # the finished copy's shard, untouched
    assert [p.name for p in shard.parent.iterdir() if p.name.startswith(".")] == []  # no temporary left
    stray = shard.parent / ".part-00001.parquet.999-dead.tmp"  # what a writer killed mid-shard leaves
    stray.write_bytes(b"half a shard")
    report.unlink()
    monkeypatch.setattr(one_shard, "read_pairs", reads)
    ingest_in_process(synth_v2, out, shard_size=40)  # the re-run finishes the shard set and clears it away
    assert not stray.exists() and shard.read_bytes() == good
