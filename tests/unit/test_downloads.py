"""The published downloads without Ray: their shape, the streaming tar reader, staging (bounded memory, resume
without rewriting), and an ingest from them in this process (the Ray ingests, faults, S3 and HTTP:
tests/integration/test_downloads.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import tarfile
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from bigearth.archive import staging, tarstream
from bigearth.archive.layouts import detect_layout, layout_for
from bigearth.archive.staging import stage_download
from bigearth.archive.tarstream import open_download
from bigearth.core.storage import StorageOptions, open_fs
from bigearth.ingest.job import ingest
from bigearth.ingest.shard import STATE_DIR
from bigearth.synth.archive import synthesize
from helpers import assert_same_shards

S2, S1 = "BigEarthNet-S2.tar.zst", "BigEarthNet-S1.tar.zst"


def _members(path: Path, compression: str) -> list[str]:
    with open(path, "rb") as f:
        stream, _ = open_download(f, compression)  # type: ignore[arg-type]
        return [m.name for m in stream]


def test_packed_downloads_have_the_published_shape(packed_v2: Path, synth_v2: Path) -> None:
    assert sorted(os.listdir(packed_v2)) == sorted(
        [S1, S2, "metadata.parquet", "metadata_for_patches_with_snow_cloud_or_shadow.parquet", "MD5SUMS"]
    )
    # md5sum's format, as a mirror provides it: what `md5sum -c MD5SUMS` checks
    assert (packed_v2 / "MD5SUMS").read_text() == "".join(
        f"{hashlib.md5((packed_v2 / n).read_bytes()).hexdigest()}  {n}\n" for n in sorted([S1, S2])
    )
    for name in (S1, S2):
        data = (packed_v2 / name).read_bytes()
        # ONE zstd frame: the first frame spans the whole file
        frame = zstandard.frame_header_size(data)
        assert frame > 0
        dobj = zstandard.ZstdDecompressor().decompressobj()
        raw = dobj.decompress(data)
        assert dobj.eof and not dobj.unused_data
        # a GNU tar of files only, in sorted order
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as t:
            infos = t.getmembers()
        assert all(i.isfile() for i in infos)
        names = [i.name for i in infos]
        assert names == sorted(names)
        assert raw[257:265] == b"ustar  \x00"  # GNU magic (the first header is the long-name entry)
        assert _members(packed_v2 / name, "zstd") == names  # our reader sees exactly the tar's members
    # S2 members come in S2 product order, S1 in S1 scene order: the pair orders differ
    lay = layout_for("v2", "")
    meta = pq.read_table(synth_v2 / "metadata.parquet").to_pylist()
    s2_of = {r["s1_name"]: r["patch_id"] for r in meta}
    s2_order = [m.split("/")[2] for m in _members(packed_v2 / S2, "zstd") if m.endswith("_B01.tif")]
    s1_order = [
        s2_of[m.split("/")[2]]
        for m in _members(packed_v2 / S1, "zstd")
        if m.endswith("_VV.tif") and m.split("/")[2] in s2_of
    ]
    assert s2_order != [p for p in s1_order if p in set(s2_order)]
    assert lay.s2_band(meta[0]["patch_id"], "B02").startswith("BigEarthNet-S2/")
    assert detect_layout(*open_fs(str(packed_v2))).name == "v2-downloads"
    assert detect_layout(*open_fs(str(synth_v2))).name == "v2"


def test_staging_memory_does_not_grow_with_the_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staging, "SPILL_BYTES", 2 << 20)
    monkeypatch.setattr(tarstream, "READ_CHUNK", 256 << 10)  # so that both archives exceed every buffer
    peaks = []
    for pairs in (60, 240):
        packed = tmp_path / f"packed{pairs}"
        synthesize(str(packed), layout="v2", pairs=pairs, seed=1, progress=False, packed=True)
        assert not (packed / "BigEarthNet-S2").exists()  # only the downloads and the metadata
        rows = pq.read_table(packed / "metadata.parquet", columns=["patch_id"])["patch_id"]
        route = pa.table({"name": rows, "shard": pa.array([i % 7 for i in range(len(rows))], pa.int32())})
        d = layout_for("v2-downloads", str(packed)).downloads[0]
        tracemalloc.start()
        pool = pa.default_memory_pool()
        rec = stage_download(
            dataclasses.asdict(d),
            str(packed),
            str(tmp_path / f"stage{pairs}"),
            StorageOptions(),
            route,
            rows,
            progress=False,
        )
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peaks.append(peak + pool.max_memory())
        assert rec["counts"]["staged"] == 12 * len(rows) and len(rec["spills"]) >= 1
    # 4x the pairs (and bytes), about the same peak: bounded by the spill buffer and the decompression window
    assert peaks[1] < 1.5 * peaks[0] + (4 << 20), peaks


def _tar(names_sizes: list[tuple[str, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, size in names_sizes:
            info = tarfile.TarInfo(name)
            info.size = size
            t.addfile(info, io.BytesIO(bytes([len(name) % 251]) * size))
    return buf.getvalue()


MEMBERS = [(f"BigEarthNet-S2/P/p{i}/p{i}_B0{i % 9}.tif", 1000 + 37 * i) for i in range(40)]


def _read(data: bytes, compression: str) -> tuple[list[str], Any]:
    stream, reader = open_download(io.BytesIO(data), compression)  # type: ignore[arg-type]
    names = [m.name for m in stream]
    reader.drain()
    return names, stream


def test_gzip_padding_concatenated_members_and_multi_frame_zstd_are_read_whole() -> None:
    import gzip

    raw = _tar(MEMBERS)
    half = len(raw) // 2 // 512 * 512
    cases = {
        "gzip + zero padding": ("gzip", gzip.compress(raw, mtime=0) + bytes(4096)),
        "two gzip members": ("gzip", gzip.compress(raw[:half], mtime=0) + gzip.compress(raw[half:], mtime=0)),
        "two zstd frames": ("zstd", zstandard.compress(raw[:half]) + zstandard.compress(raw[half:])),
    }
    for what, (compression, data) in cases.items():
        names, stream = _read(data, compression)
        assert names == [n for n, _ in MEMBERS], what
        assert stream.error is None and stream.ended_cleanly and not stream.damage, what


def test_a_garbage_size_field_or_a_damaged_last_header_is_damage_not_a_hang() -> None:
    raw = bytearray(_tar(MEMBERS))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as t:
        offsets = [m.offset for m in t.getmembers()]
    # member 5: a huge size with a matching checksum (only the size field is wrong)
    h = offsets[5]
    raw[h + 124 : h + 136] = b"77777777777\0"
    raw[h + 148 : h + 156] = b" " * 8
    raw[h + 148 : h + 156] = f"{sum(raw[h : h + 512]):06o}\0 ".encode()
    # the last member's header: checksum broken, right before the end-of-archive marker
    last = offsets[-1]
    raw[last + 148] ^= 0x11
    names, stream = _read(zstandard.compress(bytes(raw)), "zstd")
    expected = [n for i, (n, _) in enumerate(MEMBERS) if i not in (5, len(MEMBERS) - 1)]
    assert names == expected
    assert stream.error is None and stream.ended_cleanly and len(stream.damage) == 2


def test_a_staging_interrupted_mid_stream_rewrites_no_spill(
    packed_v2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(staging, "SPILL_BYTES", 1 << 20)  # many spills
    ids = pq.read_table(packed_v2 / "metadata.parquet", columns=["patch_id"])["patch_id"]
    route = pa.table({"name": ids, "shard": pa.array([i % 4 for i in range(len(ids))], pa.int32())})
    d = dataclasses.asdict(layout_for("v2-downloads", str(packed_v2)).downloads[0])
    where = tmp_path / "stage"
    first = stage_download(d, str(packed_v2), str(where), StorageOptions(), route, ids, progress=False)
    assert len(first["spills"]) > 3
    # as if killed before the record was written: the spills and their markers are there, the record is not
    (where / "BigEarthNet-S2.tar.zst.json").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in where.rglob("spill-*")}
    again = stage_download(d, str(packed_v2), str(where), StorageOptions(), route, ids, progress=False)
    assert {p: p.stat().st_mtime_ns for p in where.rglob("spill-*")} == stamps  # decompressed again, nothing rewritten
    assert again["spills"] == first["spills"] and again["md5"] == first["md5"]


def test_v2_downloads_ingest_in_this_process_to_the_same_shards_as_the_folders(
    packed_v2: Path, shards_v2: Path, tmp_path: Path
) -> None:
    """Staging and shards through the local executor: no Ray, the same shards as the folders."""
    from bigearth.execution.executors import LocalExecutor

    out = tmp_path / "from-downloads"
    m = ingest(
        str(packed_v2), str(out), shard_size=30, progress=False, trust_md5sums=True, executor=LocalExecutor(False)
    )
    assert_same_shards(shards_v2, out)
    assert set(m.source["downloads"]) == {S1, S2}
    assert not (out / STATE_DIR / "staged").exists()
