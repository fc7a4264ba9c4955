"""Shard format 2 without Ray: fixed-size band columns with page checksums, an unknown format version, shards never
exceed `--shard-size`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bigearth.core.bands import ALL_BANDS
from bigearth.core.storage import open_fs
from bigearth.ingest.job import plan_shards
from bigearth.shards.codecs import compression_for, resolve_compression
from bigearth.shards.format import (
    MANIFEST,
    SHARD_SCHEMA,
    Manifest,
    ShardFormatError,
)
from helpers import ingest_in_process


def _first_file(shards: Path, split: str = "validation") -> Path:
    m = Manifest.load(*open_fs(str(shards)))
    return Path(m.shard_paths(str(shards), split)[0])


def test_band_columns_are_fixed_size_and_pages_carry_checksums(shards_v2: Path) -> None:
    pf = pq.ParquetFile(_first_file(shards_v2))
    for band in ALL_BANDS:
        assert pf.schema_arrow.field(band.name).type == pa.binary(band.nbytes)
    assert pf.schema_arrow.equals(SHARD_SCHEMA, check_metadata=False)
    # a reader that verifies checksums accepts the file; flipping one byte of it is caught (next test)
    pq.ParquetFile(_first_file(shards_v2), page_checksum_verification=True).read()


def test_unknown_format_version_names_the_command_that_rewrites_it(shards_v2: Path, tmp_path: Path) -> None:
    shutil.copy(shards_v2 / MANIFEST, tmp_path / MANIFEST)
    doc = json.loads((tmp_path / MANIFEST).read_text())
    (tmp_path / MANIFEST).write_text(json.dumps({**doc, "format_version": "9"}))
    with pytest.raises(ShardFormatError, match=r"format version '9'.*bigearth ingest --archive .* --overwrite"):
        Manifest.load(*open_fs(str(tmp_path)))


def test_shards_never_exceed_the_shard_size() -> None:
    for n, size in ((20_001, 10_000), (20_000, 10_000), (1, 5), (29_999, 10_000), (3_001, 1_000)):
        ids = [f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{i}_{i}" for i in range(n)]
        plans = plan_shards(pa.table({"patch_id": ids, "split": ["train"] * n}), size)
        assert all(len(p.rows) <= size for p in plans), (n, size)
        assert sum(len(p.rows) for p in plans) == n and len(plans) == -(-n // size)


MOUNTS = """\
/dev/vda1 / ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw 0 0
server:/export /mnt/data nfs4 rw 0 0
bucket /mnt/data/s3 fuse.s3fs rw 0 0
/dev/sdb1 /mnt/data/usb fuseblk rw 0 0
//nas/share /mnt/my\\040share cifs rw 0 0
//nas/tab /mnt/a\\011tab cifs rw 0 0
"""


def test_the_default_codec_follows_the_storage(tmp_path: Path) -> None:
    """Local disks get uncompressed pages; whatever crosses a network (object stores, network file systems, network
    FUSE mounts) zstd; a symbolic link counts where it leads."""
    for url in ("s3://bucket/shards", "gs://b/s", "az://c/s", "https://host/s", "hdfs://nn/s"):
        assert compression_for(url, MOUNTS) == "zstd", url
    for url in ("/data/shards", "/tmp/x", "file:///data/shards", "/mnt/database", "/mnt/data/usb/x"):
        assert compression_for(url, MOUNTS) == "none", url
    for url in ("/mnt/data/shards", "/mnt/data", "/mnt/data/s3/x", "/mnt/my share/s", "/mnt/a\ttab/s"):
        assert compression_for(url, MOUNTS) == "zstd", url
    for url in ("file:///mnt/data/x", "file://localhost/mnt/data/x"):
        assert compression_for(url, MOUNTS) == "zstd", url
    link = tmp_path / "scratch"
    link.symlink_to("/mnt/data/project")
    assert compression_for(str(link / "shards"), MOUNTS) == "zstd"
    assert compression_for("/anything", "") == "none"  # no mount table: a local disk
    assert resolve_compression("lz4", "s3://b/s") == "lz4" and resolve_compression("auto", "s3://b/s") == "zstd"
    with pytest.raises(ValueError, match="compression 'brotli': expected 'auto' or one of"):
        resolve_compression("brotli", "/x")


def test_an_ingest_begun_with_another_codec_resumes_in_it(synth_v2: Path, tmp_path: Path) -> None:
    """Re-running with the default (auto) over an ingest begun with a named codec (or an earlier version's default,
    lz4) carries it on in that codec instead of refusing it as a different ingest; naming another codec is refused."""
    from bigearth.ingest.job import IngestError

    out = tmp_path / "shards"
    first = ingest_in_process(synth_v2, out, shard_size=30, compression="lz4")
    again = ingest_in_process(synth_v2, out, shard_size=30)
    assert first.source["compression"] == again.source["compression"] == "lz4"
    assert pq.ParquetFile(_first_file(out)).metadata.row_group(0).column(0).compression == "LZ4"
    with pytest.raises(IngestError, match="holds a different ingest"):
        ingest_in_process(synth_v2, out, shard_size=30, compression="zstd")
