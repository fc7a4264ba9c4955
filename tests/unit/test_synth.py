"""Synthetic archives are in the exact real format, deterministic, and carry a learnable class signal."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio

from bigearth.archive.layouts import layout_for
from bigearth.archive.names import parse_s1, parse_s2
from bigearth.synth.archive import synthesize
from bigearth.synth.grid import patch_corner, tile_origin
from helpers import LISTS_V2, REAL_V1, REAL_V2

pytestmark = pytest.mark.real


def _size_by_band(files: list[Path]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for f in files:
        out.setdefault(f.stem.rsplit("_", 1)[1], set()).add(f.stat().st_size)
    return out


def _profile(path: Path) -> dict:  # type: ignore[type-arg]
    with rasterio.open(path) as ds:
        p = dict(ds.profile)
        p.pop("transform"), p.pop("crs")
        return {**p, "tags": ds.tags()}


def test_v1_files_match_the_real_format(synth_v1: Path) -> None:
    sizes = _size_by_band(sorted(synth_v1.rglob("*.tif")))
    real = _size_by_band(
        sorted((REAL_V1 / "BigEarthNet-v1.0").rglob("*.tif")) + sorted((REAL_V1 / "BigEarthNet-S1-v1.0").rglob("*.tif"))
    )
    assert sizes == real  # e.g. B02 {29192}, B05 {7560}, B01 {1160}, VV {58024}
    real_s2 = next((REAL_V1 / "BigEarthNet-v1.0").iterdir())
    ours_s2 = next((synth_v1 / "BigEarthNet-v1.0").iterdir())
    for band in ("B01", "B05", "B02"):
        assert _profile(next(ours_s2.glob(f"*_{band}.tif"))) == _profile(next(real_s2.glob(f"*_{band}.tif")))
    real_json = json.loads(next(real_s2.glob("*.json")).read_text())
    ours_json = json.loads(next(ours_s2.glob("*.json")).read_text())
    assert list(ours_json) == list(real_json) and list(ours_json["coordinates"]) == ["ulx", "uly", "lrx", "lry"]
    s1_real = json.loads(next((REAL_V1 / "BigEarthNet-S1-v1.0").rglob("*.json")).read_text())
    s1_ours = json.loads(next((synth_v1 / "BigEarthNet-S1-v1.0").rglob("*.json")).read_text())
    assert list(s1_ours) == list(s1_real) and "lly" in s1_ours["coordinates"]  # the real quirk
    lists = synth_v1 / "lists"
    assert (lists / "train.csv").read_bytes().count(b"\r\n") == len((lists / "train.csv").read_text().splitlines())
    assert (lists / "s1_s2_mapping.csv").read_text().splitlines()[0] == "s1_name,s2_name"


def test_v2_files_and_metadata_match_the_real_format(synth_v2: Path) -> None:
    s2 = _size_by_band(sorted((synth_v2 / "BigEarthNet-S2").rglob("*.tif")))
    real = _size_by_band(sorted((REAL_V2 / "BigEarthNet-S2").rglob("*.tif")))
    assert s2 == real  # nodata tag: 29196 / 7572 / 1172
    assert _size_by_band(sorted((synth_v2 / "BigEarthNet-S1").rglob("*.tif"))) == {"VV": {58024}, "VH": {58024}}
    real_b02 = next((REAL_V2 / "BigEarthNet-S2").rglob("*_B02.tif"))
    ours_b02 = next((synth_v2 / "BigEarthNet-S2").rglob("*_B02.tif"))
    assert _profile(ours_b02) == _profile(real_b02)
    ours = pq.read_table(synth_v2 / "metadata.parquet")
    assert ours.schema.equals(pq.read_schema(LISTS_V2 / "metadata.parquet"), check_metadata=False)
    assert ours["patch_id"].to_pylist() == sorted(ours["patch_id"].to_pylist())
    lay = layout_for("v2", str(synth_v2))
    for row in ours.to_pylist()[:20]:
        name = parse_s2(row["patch_id"])
        assert Path(lay.s2_band(row["patch_id"], "B8A")).exists() and Path(lay.s1_band(row["s1_name"], "VH")).exists()
        assert row["labels"] == sorted(row["labels"])
        with (
            rasterio.open(lay.s2_band(row["patch_id"], "B01")) as a,
            rasterio.open(lay.s1_band(row["s1_name"], "VV")) as b,
        ):
            assert (a.transform.c, a.transform.f) == (b.transform.c, b.transform.f)  # shared UL corner
            assert a.crs == b.crs and a.transform.a == 60 and b.transform.a == 10
            assert name.tile is not None
            assert (a.crs.to_epsg(), a.transform.c, a.transform.f) == patch_corner(name.tile, name.h, name.v)
        assert parse_s1(row["s1_name"]).tile == name.tile


def test_tile_origins_match_the_real_patches() -> None:
    # FACTS.md 1.2: 33UUP has its upper-left corner at 300000 E, 5400000 N
    assert tile_origin("33UUP") == (32633, 300000.0, 5400000.0)
    assert patch_corner("33UUP", 87, 48) == (32633, 404400.0, 5342400.0)  # the real 87_48 pair
    assert tile_origin("35VPK")[:2] == (32635, 600000.0)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode() + f.read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed_whatever_the_workers(tmp_path: Path) -> None:
    synthesize(str(tmp_path / "a"), layout="v2", pairs=20, seed=5, workers=1, progress=False)
    synthesize(str(tmp_path / "b"), layout="v2", pairs=20, seed=5, workers=2, progress=False)
    synthesize(str(tmp_path / "c"), layout="v2", pairs=20, seed=6, workers=1, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_metadata_mode_takes_real_rows(tmp_path: Path) -> None:
    synthesize(
        str(tmp_path / "m"), layout="v2", pairs=30, seed=1, metadata=str(LISTS_V2 / "metadata.parquet"), progress=False
    )
    ours = pq.read_table(tmp_path / "m" / "metadata.parquet").to_pylist()
    ours += pq.read_table(tmp_path / "m" / "metadata_for_patches_with_snow_cloud_or_shadow.parquet").to_pylist()
    real = {
        r["patch_id"]: r
        for f in ("metadata.parquet", "metadata_for_patches_with_snow_cloud_or_shadow.parquet")
        for r in pq.read_table(LISTS_V2 / f).to_pylist()
    }
    assert len(ours) == 30
    for r in ours:
        assert r == {**real[r["patch_id"]], "labels": sorted(real[r["patch_id"]]["labels"])}
    v1 = synthesize(
        str(tmp_path / "m1"), layout="v1", pairs=10, seed=1, metadata=str(LISTS_V2 / "metadata.parquet"), progress=False
    )
    names = {p.name for p in (tmp_path / "m1" / "BigEarthNet-v1.0").iterdir()}
    assert names <= {r["s2v1_name"] for r in real.values()} and v1.lists


def test_classes_are_separable_but_not_trivially(synth_v2: Path) -> None:
    lay = layout_for("v2", str(synth_v2))
    nir: dict[str, list[float]] = {}
    for row in pq.read_table(synth_v2 / "metadata.parquet").to_pylist():
        if len(row["labels"]) == 1:
            with rasterio.open(lay.s2_band(row["patch_id"], "B08")) as ds:
                nir.setdefault(row["labels"][0], []).append(float(ds.read(1).mean()))
    means = {k: np.mean(v) for k, v in nir.items()}
    if "Pastures" in means and "Coniferous forest" in means:
        assert means["Pastures"] > means["Coniferous forest"]
    values = [v for vs in nir.values() for v in vs]
    assert np.std(values) > 100  # patches differ
