"""The REAL patches in ../shared: ingested arrays are bit-equal to rasterio reads of the GeoTIFFs and to the RSiM
LMDB; labels and splits match FACTS.md section 5. Ingested in this process, without Ray (`helpers.ingest_in_process`:
the Ray ingest's shard set, tests/integration/test_ingest.py); integration tier for the published lists it reads."""

from __future__ import annotations

import bz2
import shutil
from pathlib import Path

import lmdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import rasterio
from safetensors.numpy import load as load_safetensors

from bigearth.archive import geotiff
from bigearth.archive.layouts import ArchiveLayout, layout_for
from bigearth.archive.names import parse_s1
from bigearth.core.bands import ALL_BANDS, BANDS, S1_BANDS, S2_BANDS
from bigearth.core.storage import open_fs
from bigearth.shards.format import Manifest
from bigearth.synth.render import render_pair
from helpers import LISTS_V1, LISTS_V2, REAL_V1, REAL_V2, ingest_in_process

pytestmark = pytest.mark.real

LAND = "Land principally occupied by agriculture, with significant areas of natural vegetation"
# FACTS.md section 5: the v1 patches' labels in the 19-class nomenclature
V1_EXPECTED = {
    "S2A_MSIL2A_20170613T101031_87_48": {"Arable land", LAND},
    "S2A_MSIL2A_20170617T113321_36_85": {"Arable land", "Pastures"},
    "S2A_MSIL2A_20170617T113321_4_55": {"Pastures"},
    "S2A_MSIL2A_20171221T112501_56_35": {
        "Complex cultivation patterns",
        LAND,
        "Broad-leaved forest",
        "Transitional woodland, shrub",
    },
    "S2B_MSIL2A_20170924T93020_69_24": {
        "Coniferous forest",
        "Mixed forest",
        "Transitional woodland, shrub",
        "Inland wetlands",
        "Inland waters",
    },
    "S2B_MSIL2A_20180204T94161_57_38": {"Arable land", "Coniferous forest", "Mixed forest"},
}
SNOWY = "S2B_MSIL2A_20180204T94161_57_38"
# FACTS.md section 5: v2-only patches and their splits
V2_S2 = {
    "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43": "validation",
    "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_89_18": "train",
}
V2_S1 = {
    "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_70_48": "validation",
    "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_83_83": "train",
    "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_89_36": "train",
}


def _rows(shards: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    m = Manifest.load(*open_fs(str(shards)))
    return {r["patch_id"]: r for s in m.shards for r in pq.read_table(shards / s.path).to_pylist()}


def _array(row: dict, band: str) -> np.ndarray:  # type: ignore[type-arg]
    b = BANDS[band]
    return np.frombuffer(row[band], dtype=np.dtype(b.dtype).newbyteorder("<")).reshape(b.shape)


def _official_split(name: str) -> str | None:
    for split, f in (("train", "train.csv"), ("validation", "val.csv"), ("test", "test.csv")):
        with bz2.open(LISTS_V1 / f"{f}.bz2", "rt") as lines:
            if any(line.startswith(name + ",") for line in lines):
                return split
    return None


@pytest.fixture(scope="module")
def v1_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real") / "v1"
    ingest_in_process(REAL_V1, out, lists=str(LISTS_V1), patches=list(V1_EXPECTED), include_snow_cloud=True)
    return out


def test_v1_real_pairs_bit_exact(v1_shards: Path) -> None:
    m = Manifest.load(*open_fs(str(v1_shards)))
    assert m.pairs == 6 and m.quarantined_pairs == 0
    rows = _rows(v1_shards)
    lay = layout_for("v1", str(REAL_V1))
    for pid, row in rows.items():
        for band in ALL_BANDS:
            path = lay.s2_band(pid, band.name) if band.sensor == "s2" else lay.s1_band(row["s1_name"], band.name)
            with rasterio.open(path) as ds:
                assert np.array_equal(_array(row, band.name), ds.read(1)), (pid, band.name)
                assert row["epsg"] == ds.crs.to_epsg() and row["ulx"] == ds.transform.c


def test_v1_real_labels_splits_and_quirks(v1_shards: Path) -> None:
    rows = _rows(v1_shards)
    assert set(rows) == set(V1_EXPECTED)
    for pid, row in rows.items():
        assert set(row["labels"]) == V1_EXPECTED[pid], pid
        assert row["split"] == _official_split(pid)
        assert row["tile"] == parse_s1(row["s1_name"]).tile
    snowy = rows[SNOWY]
    assert snowy["split"] is None and snowy["contains_seasonal_snow"]
    # hour-digit bug: the time comes from the JSON (`T94161` is no valid time), not from the name
    assert str(snowy["s2_acquisition"]) == "2018-02-04 09:41:56"
    assert str(rows["S2B_MSIL2A_20170924T93020_69_24"]["s2_acquisition"]) == "2017-09-24 09:30:20"
    # S1 JSON: acquisition_time (ISO) and the `lly` quirk
    assert str(snowy["s1_acquisition"]) == "2018-02-04 04:32:53"
    assert rows["S2B_MSIL2A_20170924T93020_69_24"]["labels43"] == [
        "Coniferous forest",
        "Mixed forest",
        "Transitional woodland/shrub",
        "Peatbogs",
        "Water bodies",
    ]


def test_v1_real_default_policy_excludes_the_snowy_pair(tmp_path: Path) -> None:
    m = ingest_in_process(REAL_V1, tmp_path / "o", lists=str(LISTS_V1), patches=list(V1_EXPECTED))
    assert m.pairs == 5 and m.excluded == {"seasonal_snow": 1, "cloud_or_shadow": 0, "no_19_class_label": 0}


def _write_partner(lay: ArchiveLayout, s1_name: str | None, pid: str | None, like: Path, seed: int) -> None:
    """Synthesise the missing half of a real patch on exactly its grid (the real partner is not in ../shared)."""
    with rasterio.open(like) as ds:
        epsg, ulx, uly = ds.crs.to_epsg(), ds.transform.c, ds.transform.f
    arrays = render_pair(np.random.default_rng(seed), [2, 9])
    if s1_name:
        for b in S1_BANDS:
            p = Path(lay.s1_band(s1_name, b.name))
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(geotiff.encode(arrays[b.name], epsg, ulx, uly, b.gsd))
    if pid:
        for b in S2_BANDS:
            p = Path(lay.s2_band(pid, b.name))
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(geotiff.encode(arrays[b.name], epsg, ulx, uly, b.gsd, nodata=0, short_strip_counts=True))


@pytest.fixture(scope="module")
def v2_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real") / "v2archive"
    shutil.copytree(REAL_V2 / "BigEarthNet-S2", root / "BigEarthNet-S2")
    shutil.copytree(REAL_V2 / "BigEarthNet-S1", root / "BigEarthNet-S1")
    meta = pq.read_table(LISTS_V2 / "metadata.parquet")
    wanted = pc.or_(pc.is_in(meta["patch_id"], pa.array(list(V2_S2))), pc.is_in(meta["s1_name"], pa.array(list(V2_S1))))
    rows = meta.filter(wanted).to_pylist()
    assert len(rows) == 5
    lay = layout_for("v2", str(root))
    for i, r in enumerate(rows):
        if r["patch_id"] in V2_S2:
            _write_partner(lay, r["s1_name"], None, Path(lay.s2_band(r["patch_id"], "B02")), i)
        else:
            _write_partner(lay, None, r["patch_id"], Path(lay.s1_band(r["s1_name"], "VV")), i)
    pq.write_table(meta.from_pylist(rows, schema=meta.schema), root / "metadata.parquet")
    out = root.parent / "v2shards"
    ingest_in_process(root, out)
    return out


def test_v2_real_patches_bit_exact_with_geotiff_and_lmdb(v2_shards: Path) -> None:
    m = Manifest.load(*open_fs(str(v2_shards)))
    assert m.pairs == 5 and m.quarantined_pairs == 0
    rows = _rows(v2_shards)
    by_s1 = {r["s1_name"]: r for r in rows.values()}
    lay = layout_for("v2", str(REAL_V2))
    for pid in V2_S2:
        for b in S2_BANDS:
            with rasterio.open(lay.s2_band(pid, b.name)) as ds:
                assert ds.nodata == 0  # v2 S2 carries nodata=0; values stay raw
                assert np.array_equal(_array(rows[pid], b.name), ds.read(1)), (pid, b.name)
    for s1 in V2_S1:
        for b in S1_BANDS:
            with rasterio.open(lay.s1_band(s1, b.name)) as ds:
                assert np.array_equal(_array(by_s1[s1], b.name), ds.read(1)), (s1, b.name)
    env = lmdb.open(str(REAL_V2 / "rico-hdl-lmdb"), readonly=True, lock=False)
    with env.begin() as txn:
        s2 = load_safetensors(txn.get(b"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43"))
        s1 = load_safetensors(txn.get(b"S1A_IW_GRDH_1SDV_20170613T165043_33UUP_70_48"))
    for b in S2_BANDS:
        got = _array(rows["S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43"], b.name)
        assert got.dtype == s2[b.name].dtype and np.array_equal(got, s2[b.name]), b.name
    for b in S1_BANDS:
        got = _array(by_s1["S1A_IW_GRDH_1SDV_20170613T165043_33UUP_70_48"], b.name)
        assert np.array_equal(got, s1[b.name]), b.name


def test_v2_real_labels_and_splits(v2_shards: Path) -> None:
    rows = _rows(v2_shards)
    table = pq.read_table(LISTS_V2 / "metadata.parquet")
    meta = {r["patch_id"]: r for r in table.filter(pc.is_in(table["patch_id"], pa.array(list(rows)))).to_pylist()}
    for pid, row in rows.items():
        expected_split = V2_S2.get(pid) or V2_S1[row["s1_name"]]
        assert row["split"] == expected_split
        assert set(row["labels"]) == set(meta[pid]["labels"]) and row["country"] == "Austria"
        assert row["labels43"] is None
