"""Ingest straight from the published downloads (.tar.zst for v2, .tar.gz for v1): the same shards as from the
extracted folders, every fault quarantined with the download and member named, resume, S3, HTTP, bounded memory."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from bigearth.archive.layouts import layout_for
from bigearth.archive.staging import stage_download
from bigearth.archive.tarstream import open_download
from bigearth.core.storage import StorageOptions, open_fs
from bigearth.ingest.job import ingest
from bigearth.ingest.shard import STATE_DIR
from bigearth.shards.format import Manifest
from bigearth.synth.archive import synthesize
from bigearth.synth.packed import pack_archive
from helpers import assert_same_shards, kill_cli_ingest, quarantined
from unit.test_downloads import _members

pytestmark = pytest.mark.usefixtures("ray_local")


S2, S1 = "BigEarthNet-S2.tar.zst", "BigEarthNet-S1.tar.zst"


def test_v2_downloads_ingest_to_the_same_shards_as_the_folders(
    packed_v2: Path, shards_v2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "from-downloads"
    m = ingest(str(packed_v2), str(out), shard_size=30, progress=False, trust_md5sums=True)
    assert_same_shards(shards_v2, out)
    assert "reference_map" not in pq.read_schema(next(out.rglob("part-*.parquet"))).names  # none in the archive
    assert "reference_maps" not in m.source
    d = m.source["downloads"]
    assert set(d) == {S1, S2}
    for name in (S1, S2):
        raw = (packed_v2 / name).read_bytes()
        assert d[name]["md5"] == hashlib.md5(raw).hexdigest() and d[name]["bytes"] == len(raw)
        # a synthetic file under the published name: checked against the trusted MD5SUMS, not the published md5
        assert d[name]["md5_matches"] is True and d[name]["md5_source"] == "MD5SUMS"
        assert d[name]["expected_md5"] == d[name]["md5"] != d[name]["published_md5"]
        assert d[name]["error"] is None and d[name]["counts"]["unknown"] == 0
    printed = capsys.readouterr().out
    assert "WARNING" not in printed
    assert f"ingest: {S2} matches the md5 its MD5SUMS states" in printed and "--trust-md5sums" in printed
    assert not (out / STATE_DIR / "staged").exists()  # staging is removed once the manifest is written


def test_v1_downloads_ingest_to_the_same_shards_as_the_folders(synth_v1: Path, tmp_path: Path) -> None:
    packed = tmp_path / "v1-downloads"
    pack_archive(str(synth_v1), str(packed), "v1")
    assert {"BigEarthNet-S2-v1.0.tar.gz", "BigEarthNet-S1-v1.0.tar.gz", "lists"} <= set(os.listdir(packed))
    names = _members(packed / "BigEarthNet-S2-v1.0.tar.gz", "gzip")
    assert names[0].startswith("BigEarthNet-v1.0/") and any(n.endswith("_labels_metadata.json") for n in names)
    a, b = tmp_path / "folder", tmp_path / "downloads"
    ingest(str(synth_v1), str(a), lists=str(synth_v1 / "lists"), shard_size=40)
    m = ingest(str(packed), str(b), lists=str(packed / "lists"), shard_size=40, progress=False, trust_md5sums=True)
    assert m.source["layout"] == "v1" and set(m.source["downloads"]) == {
        "BigEarthNet-S2-v1.0.tar.gz",
        "BigEarthNet-S1-v1.0.tar.gz",
    }
    assert m.excluded["no_19_class_label"] >= 0
    assert_same_shards(a, b)


def _recompress(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    raw = bytearray(zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes()))
    edit(raw)
    path.write_bytes(zstandard.ZstdCompressor(level=6).compress(bytes(raw)))


def test_faults_are_quarantined_naming_the_download_and_member(synth_v2: Path, archive_copy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = archive_copy(synth_v2)
    lay = layout_for("v2", str(root))
    rows = pq.read_table(root / "metadata.parquet").to_pylist()
    corrupt, missing, header = rows[3], rows[10], rows[20]
    Path(lay.s2_band(corrupt["patch_id"], "B03")).write_bytes(b"II*\x00 this is not a GeoTIFF")
    Path(lay.s2_band(missing["patch_id"], "B8A")).unlink()
    # a patch folder the metadata does not know
    first = rows[0]["patch_id"]
    stray = Path(lay.s2_dir(first).replace(first, first.rsplit("_", 2)[0] + "_99_99"))
    shutil.copytree(lay.s2_dir(first), stray)
    for f in stray.iterdir():
        f.rename(stray / f.name.replace(first, stray.name))
    packed = tmp_path / "packed"
    pack_archive(str(root), str(packed), "v2")

    # a damaged tar header (inside a valid zstd frame): that member is lost, the reader resyncs on the next one
    victim = lay.s2_band(header["patch_id"], "B05").split(str(root) + "/", 1)[1]

    def damage(raw: bytearray) -> None:
        long_name = raw.find(victim.encode())  # the GNU long-name entry's data block
        assert long_name > 0
        real_header = long_name + 512  # the member's own header follows its long-name data
        raw[real_header + 148] ^= 0x55  # its checksum no longer matches

    _recompress(packed / S2, damage)
    # the S1 download cut short: every pair whose S1 files lie beyond the cut is quarantined, those before kept
    s1 = (packed / S1).read_bytes()
    (packed / S1).write_bytes(s1[: int(len(s1) * 0.6)])

    # both files now differ from the md5 MD5SUMS states: accepted, so that their damage is what is tested
    m = ingest(
        str(packed),
        str(tmp_path / "out"),
        shard_size=30,
        progress=False,
        accept_checksum_mismatch=True,
        trust_md5sums=True,
    )
    assert {n: d["md5_matches"] for n, d in m.source["downloads"].items()} == {S1: False, S2: False}
    q = {x["patch_id"]: x for x in quarantined(tmp_path / "out")}
    assert m.quarantined_pairs == len(q)
    assert q[corrupt["patch_id"]]["kind"] == "corrupt_file"
    assert (
        f"{S2}:BigEarthNet-S2/" in q[corrupt["patch_id"]]["reason"] and "_B03.tif" in q[corrupt["patch_id"]]["reason"]
    )
    assert q[missing["patch_id"]]["kind"] == "missing_file"
    assert f"{S2} has no member BigEarthNet-S2/" in q[missing["patch_id"]]["reason"]
    assert q[header["patch_id"]]["kind"] == "missing_file" and "_B05.tif" in q[header["patch_id"]]["reason"]
    assert "damaged" in q[header["patch_id"]]["reason"]
    d = m.source["downloads"]
    assert d[S2]["counts"]["unknown"] == 12 and stray.name in d[S2]["examples"]["unknown"][0]
    assert d[S2]["damage"] and d[S2]["error"] is None
    assert "ends early" in d[S1]["error"]
    # the truncation: exactly the pairs whose S1 files come after the last member read are missing their partner
    selected = {r["patch_id"] for r in rows if not (r["contains_seasonal_snow"] or r["contains_cloud_or_shadow"])}
    cut = [x for x in q.values() if x["kind"] == "missing_s1"]
    assert cut and all(S1 in x["reason"] and "ends early" in x["reason"] for x in cut)
    with open(packed / S1, "rb") as f:
        stream, _ = open_download(f, "zstd")
        read = {mem.name.split("/")[2] for mem in stream}
    s2_of = {r["s1_name"]: r["patch_id"] for r in rows}
    cut_ids = {x["patch_id"] for x in cut}
    for s1_name, pid in s2_of.items():
        if pid in selected and pid not in {corrupt["patch_id"], missing["patch_id"], header["patch_id"]}:
            assert (pid in cut_ids) == (s1_name not in read), pid
    written = {
        r
        for s in m.shards
        for r in pq.read_table(tmp_path / "out" / s.path, columns=["patch_id"])["patch_id"].to_pylist()
    }
    assert written | set(q) == selected and not written & set(q)  # every pair written or quarantined, never both


def test_an_altered_download_stops_the_ingest_before_any_shard_unless_accepted(
    synth_v2: Path, packed_v2: Path, archive_copy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    """One band's pixels altered and the S2 download packed again (valid tar, valid zstd, valid GeoTIFF): only its
    md5 tells, against the MD5SUMS that came with the downloads."""
    import numpy as np
    import rasterio

    from bigearth.archive.checksums import ChecksumMismatch
    from bigearth.archive.geotiff import encode
    from bigearth.synth.packed import write_download

    root = archive_copy(synth_v2)
    lay = layout_for("v2", str(root))
    meta = pq.read_table(root / "metadata.parquet").to_pylist()
    pid = next(r["patch_id"] for r in meta if not (r["contains_seasonal_snow"] or r["contains_cloud_or_shadow"]))
    band = lay.s2_band(pid, "B02")
    with rasterio.open(band) as ds:
        pixels, epsg, t = ds.read(1), ds.crs.to_epsg(), ds.transform
    pixels[60, 60] ^= 0x5A5
    Path(band).write_bytes(encode(pixels, epsg, t.c, t.f, t.a))
    packed = tmp_path / "repacked"
    shutil.copytree(packed_v2, packed)  # the original downloads and their MD5SUMS
    with open(packed / S2, "wb") as f:
        write_download(f, str(root), layout_for("v2-downloads", "").downloads[0])
    altered = hashlib.md5((packed / S2).read_bytes()).hexdigest()
    stated = hashlib.md5((packed_v2 / S2).read_bytes()).hexdigest()
    published = layout_for("v2-downloads", "").downloads[0].md5
    out = tmp_path / "out"
    with pytest.raises(ChecksumMismatch) as e:  # its own MD5SUMS disagrees with the published md5: not trusted
        ingest(str(packed), str(out), shard_size=30, progress=False)
    assert f"{packed / S2}: MD5SUMS states md5 {stated}, the published md5 is {published}" in str(e.value)
    assert not list(out.rglob("*.parquet")) and not list(out.rglob(f"{S2}.json"))  # nothing read
    with pytest.raises(ChecksumMismatch) as e:
        ingest(str(packed), str(out), shard_size=30, progress=False, trust_md5sums=True)
    assert f"{packed / S2}: md5 {altered}, the md5 MD5SUMS states is {stated}" in str(e.value)
    assert not list(out.rglob("*.parquet")) and not (out / "manifest.json").exists()  # stopped before any shard
    assert not list(out.rglob(f"{S2}.json"))  # its staging is gone: a re-run reads the file again
    m = ingest(str(packed), str(out), shard_size=30, progress=False, accept_checksum_mismatch=True, trust_md5sums=True)
    d = m.source["downloads"][S2]
    assert (d["md5"], d["expected_md5"], d["md5_matches"]) == (altered, stated, False)
    assert m.source["downloads"][S1]["md5_matches"] is True
    assert f"WARNING {S2}: md5 {altered} differs from the expected {stated} (MD5SUMS)" in capsys.readouterr().out
    rows = pa.concat_tables([pq.read_table(out / s.path, columns=["patch_id", "B02"]) for s in m.shards])
    row = rows.filter(pa.compute.equal(rows["patch_id"], pid)).to_pylist()[0]
    assert np.array_equal(np.frombuffer(row["B02"], "<u2").reshape(120, 120), pixels)  # the accepted pixels


def test_a_missing_download_quarantines_its_pairs(
    packed_v2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(packed_v2, partial)
    (partial / S1).unlink()
    m = ingest(str(partial), str(tmp_path / "out"), shard_size=30, limit=12, progress=False, trust_md5sums=True)
    q = quarantined(tmp_path / "out")
    assert m.pairs == 0 and m.quarantined_pairs == len(q) == 12
    assert all(x["kind"] == "missing_s1" and f"{S1} is not in the archive folder" in x["reason"] for x in q)
    assert m.source["downloads"][S1]["missing"] is True
    assert f"WARNING {S1} is not in the archive folder" in capsys.readouterr().out


def test_killed_after_staging_resumes_without_decompressing_again(
    packed_v2: Path, shards_v2: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = kill_cli_ingest(packed_v2, out, shard_size=10, reports=1, timeout=240)
    records = sorted((out / STATE_DIR / "staged").rglob("*.tar.zst.json"))
    assert len(records) == 2, "killed before staging finished"
    assert 0 < len(done) < 12, "the first run was not killed half way"
    stamps = {r: r.stat().st_mtime_ns for r in records}
    m = ingest(str(packed_v2), str(out), shard_size=10, progress=False, keep_staging=True, trust_md5sums=True)
    assert {r: r.stat().st_mtime_ns for r in records} == stamps  # staged downloads not decompressed again
    ids = [p for s in m.shards for p in pq.read_table(out / s.path, columns=["patch_id"])["patch_id"].to_pylist()]
    assert len(ids) == len(set(ids)) == Manifest.load(*open_fs(str(shards_v2))).pairs


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A static file server that honours `Range` (as Zenodo and any mirror do)."""

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        rng = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not rng or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        start_s, end_s = rng.split("=", 1)[1].split("-")
        start, end = int(start_s), min(int(end_s) if end_s else size - 1, size - 1)
        f = open(path, "rb")  # noqa: SIM115  (closed by the base class)
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return _Limited(f, end - start + 1)


class _Limited(io.RawIOBase):
    def __init__(self, f: io.BufferedReader, n: int) -> None:
        self.f, self.n = f, n

    def read(self, size: int = -1) -> bytes:
        size = self.n if size < 0 else min(size, self.n)
        data = self.f.read(size)
        self.n -= len(data)
        return data

    def close(self) -> None:
        self.f.close()


@pytest.fixture()
def http_mirror(packed_v2: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_RangeHandler, directory=str(packed_v2))
    )
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_ingest_from_an_http_mirror(http_mirror: str, shards_v2: Path, tmp_path: Path) -> None:
    out = tmp_path / "from-http"
    ingest(http_mirror, str(out), shard_size=30, progress=False, trust_md5sums=True)
    assert_same_shards(shards_v2, out)


@pytest.mark.s3
def test_ingest_downloads_from_s3(s3, packed_v2: Path, shards_v2: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bucket = s3.make_bucket("bigearth-downloads")
    s3.fs().put(str(packed_v2), f"{bucket}/zenodo", recursive=True)
    out = tmp_path / "from-s3"
    storage = s3.storage_options()
    ingest(
        f"s3://{bucket}/zenodo",
        str(out),
        shard_size=30,
        storage=storage,
        progress=False,
        staging=str(tmp_path / "stage"),
        trust_md5sums=True,
    )
    assert_same_shards(shards_v2, out)


def test_reference_maps_become_an_optional_column_bit_exact(tmp_path: Path) -> None:
    import numpy as np
    import rasterio

    src = tmp_path / "src"
    synthesize(str(src), layout="v2", pairs=40, seed=5, progress=False, reference_maps=True)
    lay = layout_for("v2", str(src))
    rows = pq.read_table(src / "metadata.parquet").to_pylist()
    Path(lay.reference_map(rows[1]["patch_id"])).unlink()  # a patch without its map: kept, listed
    packed = tmp_path / "packed"
    pack_archive(str(src), str(packed), "v2")
    assert "Reference_Maps.tar.zst" in os.listdir(packed)
    a, b = tmp_path / "a", tmp_path / "b"
    ma = ingest(str(src), str(a), shard_size=20)
    mb = ingest(str(packed), str(b), shard_size=20, progress=False, trust_md5sums=True)
    assert_same_shards(a, b)
    assert ma.source["reference_maps"] == mb.source["reference_maps"]
    assert ma.reference_maps_missing(*open_fs(str(a))) == mb.reference_maps_missing(*open_fs(str(b)))
    assert ma.reference_maps_missing(*open_fs(str(a))) == [rows[1]["patch_id"]]
    assert ma.source["reference_maps"]["missing_pairs"] == 1
    assert "Reference_Maps.tar.zst" in mb.source["downloads"]
    t = pa.concat_tables([pq.read_table(b / s.path) for s in mb.shards])
    assert t.schema.field("reference_map").type == pa.binary(120 * 120 * 2)
    checked = 0
    for r in t.select(["patch_id", "reference_map"]).to_pylist():
        if r["reference_map"] is None:
            assert r["patch_id"] == rows[1]["patch_id"]
            continue
        with rasterio.open(lay.reference_map(r["patch_id"])) as ds:
            expected = ds.read(1)
        assert np.array_equal(np.frombuffer(r["reference_map"], "<u2").reshape(120, 120), expected)
        checked += 1
    assert checked == mb.pairs - 1


class _Dropping(_RangeHandler):
    """Sends the first 1 MB of a file, then closes the connection (a storage fault, not a damaged file)."""

    def send_head(self):  # type: ignore[no-untyped-def]
        path = self.translate_path(self.path)
        if self.command == "HEAD" or not path.endswith(".tar.zst"):
            return super().send_head()
        size = os.path.getsize(path)
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        with open(path, "rb") as f:
            self.wfile.write(f.read(1 << 20))
        self.close_connection = True
        return None


def test_a_storage_fault_mid_download_stops_with_a_rerun_message_and_records_nothing(
    packed_v2: Path, tmp_path: Path
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Dropping, directory=str(packed_v2)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    ids = pq.read_table(packed_v2 / "metadata.parquet", columns=["patch_id"])["patch_id"]
    route = pa.table({"name": ids, "shard": pa.array([0] * len(ids), pa.int32())})
    d = layout_for("v2-downloads", url).downloads[0]
    try:
        with pytest.raises(OSError, match=r"BigEarthNet-S2\.tar\.zst: reading stopped after .* re-run the ingest"):
            stage_download(dataclasses.asdict(d), url, str(tmp_path / "stage"), StorageOptions(), route, ids, False)
    finally:
        server.shutdown()
    assert not list((tmp_path / "stage").glob("*.json"))  # no record: a re-run reads the download again
