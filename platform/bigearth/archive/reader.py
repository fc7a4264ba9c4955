"""Read, decode and validate whole pairs: the 14 band files (+ v1 JSONs) of many pairs in one batch of GETs.

Every problem becomes a `Problem` that names the file or field and what was expected; the caller quarantines the
pair and goes on. A pair is returned as a dict of plain values, one key per shard column.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from bigearth.archive import geotiff
from bigearth.archive.layouts import ArchiveLayout
from bigearth.archive.names import PatchNameError, parse_s1, parse_s2
from bigearth.core import labels as lab
from bigearth.core.bands import S1_BANDS, S2_BANDS, Band
from bigearth.core.storage import BlobReader, StorageUnavailable


@dataclass(frozen=True)
class Problem:
    """Why a pair cannot be ingested: `kind` is a stable code, `message` names the file/field."""

    kind: str
    message: str


@dataclass(frozen=True)
class Excluded:
    """A pair the policy excludes once its metadata is read (v1: no 19-class label in its JSON)."""

    reason: str


class MissingMember(FileNotFoundError):
    """A pair's file is not in its download; the message says why (absent, or the download damaged or missing)."""


class _Bad(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.problem = Problem(kind, message)


def _paths(layout: ArchiveLayout, row: dict[str, Any]) -> dict[str, str]:
    return layout.files(row)


def fetch_pairs(reader: BlobReader, layout: ArchiveLayout, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Every file of `rows` (14 bands, + 2 JSONs in v1) in one batch of concurrent GETs: path -> bytes | error."""
    return reader.read_many([p for r in rows for p in _paths(layout, r).values()])


def read_pairs(
    reader: BlobReader,
    layout: ArchiveLayout,
    rows: Sequence[dict[str, Any]],
    include_no_19_labels: bool = False,
    blobs: dict[str, Any] | None = None,
) -> list[dict[str, Any] | Problem | Excluded]:
    """Decode and validate `rows` (fetching their files first unless `blobs` already holds them)."""
    per_row = [_paths(layout, r) for r in rows]
    if blobs is None:
        blobs = fetch_pairs(reader, layout, rows)
    out: list[dict[str, Any] | Problem | Excluded] = []
    for row, paths in zip(rows, per_row, strict=True):
        try:
            out.append(_pair(layout, row, paths, blobs, include_no_19_labels))
        except _Bad as bad:
            out.append(bad.problem)
    return out


def _blob(blobs: dict[str, Any], path: str) -> bytes:
    data = blobs.get(path)
    if isinstance(data, MissingMember):
        raise _Bad("missing_file", f"missing file: {path} ({data})")
    if data is None or isinstance(data, FileNotFoundError):
        raise _Bad("missing_file", f"missing file: {path}")
    if isinstance(data, StorageUnavailable):
        # an outage is not a property of the pair: stop (finished shards are kept) instead of quarantining it
        raise StorageUnavailable(
            f"{data}; re-run the same command to resume (finished shards are kept, this one is redone)"
        )
    if isinstance(data, BaseException):  # refused (403) or unreadable for good: this file, recorded and skipped
        raise _Bad("unreadable_file", f"{path}: could not be read ({type(data).__name__}: {data})"[:600])
    return bytes(data)


def _reason(e: geotiff.RasterError) -> str:
    """A decode error for the ingest report: the message, and GDAL's words for the operator (not a client)."""
    return f"{e} (GDAL: {e.detail})"[:600] if e.detail else str(e)


def _decode(data: bytes, path: str, expect: tuple[tuple[int, int], str]) -> geotiff.Raster:
    """One member decoded, its size and dtype checked from the header first (a few hundred bytes claiming
    60000x60000 pixels are never allocated); whatever else goes wrong in decoding is this file's `corrupt_file`,
    never an exception that ends the shard's task."""
    try:
        return geotiff.decode(data, path, expect=expect)
    except geotiff.RasterMismatch:
        raise
    except geotiff.RasterError as e:
        raise _Bad("corrupt_file", _reason(e)) from None
    except Exception as e:  # decode turns every error into a RasterError; this is the ingest's own safety net
        raise _Bad("corrupt_file", f"{path}: not a readable GeoTIFF ({type(e).__name__}: {e})"[:600]) from None


def _band(blobs: dict[str, Any], path: str, band: Band) -> geotiff.Raster:
    data = _blob(blobs, path)
    try:
        r = _decode(data, path, (band.shape, band.dtype))
    except geotiff.RasterMismatch as e:
        if e.what == "dtype":
            raise _Bad("wrong_dtype", f"{path}: expected {band.dtype} for {band.name}, got {e.found}") from None
        raise _Bad(
            "wrong_shape",
            f"{path}: expected {band.shape[0]}x{band.shape[1]} pixels for {band.name}, got {e.found[0]}x{e.found[1]}",
        ) from None
    if r.epsg is None or not (32601 <= r.epsg <= 32660 or 32701 <= r.epsg <= 32760):
        raise _Bad("bad_georeference", f"{path}: expected a WGS 84 / UTM CRS, got EPSG {r.epsg}")
    if abs(r.res - band.gsd) > 1e-6:
        raise _Bad("bad_georeference", f"{path}: expected {band.gsd} m pixels for {band.name}, got {r.res} m")
    return r


def _json(blobs: dict[str, Any], path: str) -> dict[str, Any]:
    try:
        doc = json.loads(_blob(blobs, path))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _Bad("bad_metadata", f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("labels"), list):
        raise _Bad("bad_metadata", f"{path}: expected an object with a 'labels' list")
    return doc


def _corner_agrees(doc: dict[str, Any], path: str, ulx: float, uly: float) -> None:
    c = doc.get("coordinates") or {}
    if "ulx" in c and "uly" in c and (abs(c["ulx"] - ulx) > 0.5 or abs(c["uly"] - uly) > 0.5):
        raise _Bad(
            "bad_georeference",
            f"{path}: coordinates ulx/uly {c['ulx']}/{c['uly']} disagree with the "
            f"GeoTIFFs' upper-left corner {ulx}/{uly}",
        )


def _same_grid(path: str, r: geotiff.Raster, ref: geotiff.Raster, what: str, whose: str) -> None:
    if (r.epsg, r.ulx, r.uly) != (ref.epsg, ref.ulx, ref.uly):
        raise _Bad(
            "georef_mismatch",
            f"{path}: {what} EPSG {r.epsg} {r.ulx}/{r.uly} differs from {whose} EPSG {ref.epsg} {ref.ulx}/{ref.uly}",
        )


def _pair(
    layout: ArchiveLayout, row: dict[str, Any], paths: dict[str, str], blobs: dict[str, Any], include_no_19: bool
) -> dict[str, Any] | Excluded:
    pid = row["patch_id"]
    try:
        s2name = parse_s2(pid)
    except PatchNameError as e:
        raise _Bad("bad_name", str(e)) from None
    s2 = {b.name: _band(blobs, paths[b.name], b) for b in S2_BANDS}
    ref = s2["B02"]
    for name, r in s2.items():
        _same_grid(paths[name], r, ref, "CRS/upper-left corner", "B02's")
    s1_name = row.get("s1_name")
    if not s1_name:
        raise _Bad("missing_s1", f"{pid}: the metadata names no Sentinel-1 partner")
    vv, vh = paths["VV"], paths["VH"]
    if isinstance(blobs.get(vv), FileNotFoundError) and isinstance(blobs.get(vh), FileNotFoundError):
        why = f" ({blobs[vv]})" if isinstance(blobs.get(vv), MissingMember) else ""
        raise _Bad("missing_s1", f"missing S1 partner {s1_name}: neither {vv} nor {vh} exists{why}")
    s1 = {b.name: _band(blobs, paths[b.name], b) for b in S1_BANDS}
    for name, r in s1.items():
        _same_grid(paths[name], r, ref, "S1 CRS/upper-left corner", "the S2 patch's")
        bad = int(np.count_nonzero(~np.isfinite(r.array)))
        if bad:
            raise _Bad("non_finite", f"{paths[name]}: {bad} non-finite value(s) (NaN/inf) in {name}")
    try:
        s1_time = parse_s1(s1_name).timestamp
    except PatchNameError as e:
        raise _Bad("bad_name", str(e)) from None

    labels43: list[str] | None = None
    s2_time: datetime | None = s2name.timestamp
    if "s2_json" in paths:  # labels in the patch JSONs (v1), else in the metadata row (v2)
        s2doc = _json(blobs, paths["s2_json"])
        s1doc = _json(blobs, paths["s1_json"])
        _corner_agrees(s2doc, paths["s2_json"], ref.ulx, ref.uly)
        _corner_agrees(s1doc, paths["s1_json"], ref.ulx, ref.uly)  # S1 JSON says `lly` for `lry`: only UL compared
        partner = s1doc.get("corresponding_s2_patch")
        if partner is not None and partner != pid:
            raise _Bad("missing_s1", f"{paths['s1_json']}: corresponding_s2_patch is {partner!r}, expected {pid!r}")
        labels43 = list(s2doc["labels"])
        try:
            labels19 = lab.convert_43_to_19(labels43)
        except lab.UnknownLabelError as e:
            raise _Bad("unknown_label", f"{paths['s2_json']}: {e}") from None
        labels43 = [lab.BEN43[i] for i in sorted(lab.label_index(n, 43) for n in set(labels43))]
        s2_time = _parse_time(s2doc.get("acquisition_date"), paths["s2_json"], "acquisition_date") or s2_time
        s1_time = _parse_time(s1doc.get("acquisition_time"), paths["s1_json"], "acquisition_time") or s1_time
        if not labels19 and not include_no_19:
            return Excluded("no_19_class_label")
    else:
        names = row.get("labels") or []
        for n in names:
            if n not in lab.BEN19:
                raise _Bad("unknown_label", f"{pid}: unknown 19-class label {n!r} in metadata.parquet")
        labels19 = [lab.BEN19[i] for i in sorted(lab.label_index(n) for n in set(names))]

    out: dict[str, Any] = {
        "patch_id": pid,
        "s1_name": s1_name,
        "split": row.get("split"),
        "labels": labels19,
        "labels43": labels43,
        "country": row.get("country"),
        "tile": row.get("tile"),
        "s2_acquisition": s2_time,
        "s1_acquisition": s1_time,
        "epsg": ref.epsg,
        "ulx": float(ref.ulx),
        "uly": float(ref.uly),
        "contains_seasonal_snow": bool(row.get("contains_seasonal_snow")),
        "contains_cloud_or_shadow": bool(row.get("contains_cloud_or_shadow")),
    }
    for name, r in {**s2, **s1}.items():
        out[name] = np.ascontiguousarray(r.array, dtype=r.array.dtype.newbyteorder("<")).tobytes()
    if "reference_map" in paths:
        out["reference_map"] = _reference_map(blobs, paths["reference_map"], ref)
    return out


def _reference_map(blobs: dict[str, Any], path: str, ref: geotiff.Raster) -> bytes | None:
    """The v2 reference map (CLC codes, uint16, the 10 m grid) as little-endian bytes; None if the archive has
    none for this patch (the ingest lists those), a quarantine if it is there but damaged."""
    data = blobs.get(path)
    if data is None or isinstance(data, FileNotFoundError):
        return None
    raw = _blob(blobs, path)
    try:
        r = _decode(raw, path, ((120, 120), "uint16"))
    except geotiff.RasterMismatch as e:
        got = e.found if e.what == "dtype" else f"{e.found[0]}x{e.found[1]}"
        raise _Bad("wrong_shape", f"{path}: expected a 120x120 uint16 reference map, got {got}") from None
    _same_grid(path, r, ref, "reference map CRS/upper-left corner", "B02's")
    return np.ascontiguousarray(r.array, dtype="<u2").tobytes()


def _parse_time(value: Any, path: str, key: str) -> datetime | None:
    """v1 S2 JSON: `YYYY-MM-DD hh:mm:ss`; v1 S1 JSON: ISO `YYYY-MM-DDThh:mm:ss` (FACTS.md 1.4)."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(str(value).replace(" ", "T"))
    except ValueError:
        raise _Bad("bad_metadata", f"{path}: {key} {value!r} is not a date-time") from None
