"""Shard format 2 through Ray: the compression choice, page checksums verified on read (a corrupted or cut-short
shard is an error naming the file, never data), format 1 shard sets still read; the unit tier's shard set, written
without Ray, is the Ray ingest's (the rest: tests/unit/test_shard_format.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bigearth.core.bands import ALL_BANDS
from bigearth.core.storage import open_fs
from bigearth.ingest.job import ingest
from bigearth.input.raydata import iter_torch, open_split
from bigearth.shards.format import MANIFEST, SHARD_SCHEMA, Manifest, ShardFormatError

pytestmark = pytest.mark.usefixtures("ray_local")


def _epoch(shards: Path, split: str = "validation") -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for batch in iter_torch(open_split(str(shards), split, shuffle_files=False), 16):
        for i, pid in enumerate(batch["patch_id"]):
            out[pid] = {k: v[i].numpy() for k, v in batch.items() if k != "patch_id"}
    return out


def _first_file(shards: Path, split: str = "validation") -> Path:
    m = Manifest.load(*open_fs(str(shards)))
    return Path(m.shard_paths(str(shards), split)[0])


def test_flipped_bytes_are_an_error_naming_the_file(shards_v2: Path, tmp_path: Path) -> None:
    shards = tmp_path / "s"
    shutil.copytree(shards_v2, shards)
    victim = _first_file(shards)
    data = bytearray(victim.read_bytes())
    # inside a pixel page: its last bytes (uncompressed, the default on a local disk, or lz4, whose blocks end in
    # literals: either way the page still decodes, and only its checksum tells)
    from bigearth.shards.pages import offset_index_locations, page_locations, read_footer

    column = pq.ParquetFile(victim).schema_arrow.get_field_index("B02")
    where = offset_index_locations(read_footer(lambda n, o: bytes(data[o : o + n]), len(data)))[0][column]
    assert where is not None
    page = page_locations(bytes(data[where[0] : where[0] + where[1]]))[3]
    middle = page.offset + page.size - 4
    data[middle : middle + 3] = bytes(255 - b for b in data[middle : middle + 3])
    victim.write_bytes(bytes(data))
    # without the checksums the damage would be read as pixels: nothing else notices it
    pq.ParquetFile(victim, page_checksum_verification=False).read()
    with pytest.raises(Exception, match=rf"{victim.name}: row group \d+ is corrupted") as err:
        _epoch(shards)
    assert "ShardFormatError" in repr(err.value) or isinstance(err.value, ShardFormatError)


def test_cut_short_file_is_an_error_naming_the_file(shards_v2: Path, tmp_path: Path) -> None:
    shards = tmp_path / "s"
    shutil.copytree(shards_v2, shards)
    victim = _first_file(shards)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(Exception, match=rf"{victim.name}: not a readable shard file"):
        _epoch(shards)


def test_format_1_shard_sets_stay_readable(shards_v2: Path, tmp_path: Path) -> None:
    """A shard set as format 1 wrote it (variable-length binary bands, zstd, no checksums) reads the same."""
    old = tmp_path / "v1"
    shutil.copytree(shards_v2, old)
    v1_schema = pa.schema(
        [pa.field(f.name, pa.binary()) if f.name in {b.name for b in ALL_BANDS} else f for f in SHARD_SCHEMA]
    )
    for path in old.rglob("part-*.parquet"):
        pq.write_table(pq.read_table(path).cast(v1_schema), path, compression="zstd", row_group_size=128)
    doc = json.loads((old / MANIFEST).read_text())
    (old / MANIFEST).write_text(json.dumps({**doc, "format_version": "1"}))
    assert pq.ParquetFile(_first_file(old)).schema_arrow.field("B02").type == pa.binary()
    new, legacy = _epoch(shards_v2), _epoch(old)
    assert sorted(new) == sorted(legacy)
    for pid, arrays in new.items():
        for key, value in arrays.items():
            assert np.array_equal(value, legacy[pid][key]), (pid, key)


def test_zstd_on_request_holds_the_same_rows(synth_v2: Path, shards_v2: Path, tmp_path: Path) -> None:
    out = tmp_path / "zstd"
    m = ingest(str(synth_v2), str(out), shard_size=30, compression="zstd")
    assert m.source["compression"] == "zstd"
    pf = pq.ParquetFile(_first_file(out))
    assert pf.metadata.row_group(0).column(20).compression == "ZSTD"
    assert pf.schema_arrow.metadata[b"bigearth.compression"] == b"zstd"
    assert _epoch(out).keys() == _epoch(shards_v2).keys()
    default = sum(p.stat().st_size for p in shards_v2.rglob("part-*.parquet"))  # `auto` on a local disk: none
    zstd = sum(p.stat().st_size for p in out.rglob("part-*.parquet"))
    assert zstd < default
