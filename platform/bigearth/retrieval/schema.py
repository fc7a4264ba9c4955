"""What the index stores and how it is queried, independent of the engine.

One point per pair. Its id is a UUID5 of the patch id (so re-indexing a pair overwrites it); its named vectors
are `fused` (the model's pooled fused features) and, for models with a separate S1 and S2 encoder, `s1` and `s2`
(each modality's share of the class logits, a space the two modalities have in common: an S1 query can search S2
vectors). The payload is `patch_id`, `s1_name`, `labels`, `split`, `country`, `tile`, `date` (S2 acquisition,
RFC 3339), `season`, `location` (patch centre, WGS84 lat/lon), `snow` and `cloud` (and `flags`, the same two as
a keyword list, which filters use).
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from bigearth.archive.geo import centres_lonlat
from bigearth.core.labels import BEN19, BEN43
from bigearth.core.seasons import Season, season

POINT_NAMESPACE = uuid.UUID("6f0b7c2e-5b1a-5d8e-9c39-2b3f4e1d0a77")  # fixed: ids must stay stable across releases
VECTOR_NAMES = ("fused", "s1", "s2")
Split = Literal["train", "validation", "test"]
KNOWN_LABELS = frozenset(BEN19) | frozenset(BEN43)
#: Most values one filter list may hold after duplicates are dropped (docs/api.md "Limits"): every label of both
#: nomenclatures, every country and a generous share of the archive's tiles fit; more is a 422, never an engine error.
MAX_FILTER_VALUES = 64
MAX_FILTER_VALUE_CHARS = 64  # a country or tile name is far shorter


def point_id(patch_id: str) -> str:
    """The point id of a pair: UUID5 of its patch id (stable, so a re-run updates instead of duplicating)."""
    return str(uuid.uuid5(POINT_NAMESPACE, patch_id))


def payloads(rows: dict[str, Any]) -> list[dict[str, Any]]:
    """Payloads for a batch of shard rows (column name -> sequence, as Ray Data hands them)."""
    epsg = np.asarray(rows["epsg"], dtype=np.int64)
    lon, lat = centres_lonlat(epsg, np.asarray(rows["ulx"], float), np.asarray(rows["uly"], float))
    out = []
    for i, pid in enumerate(rows["patch_id"]):
        when = _as_datetime(rows["s2_acquisition"][i])
        out.append(
            {
                "patch_id": str(pid),
                "s1_name": str(rows["s1_name"][i]),
                "labels": [str(x) for x in rows["labels"][i]],
                "split": str(rows["split"][i]),
                "country": str(rows["country"][i]),
                "tile": str(rows["tile"][i]),
                "date": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "season": season(when.month),
                "location": {"lat": round(float(lat[i]), 6), "lon": round(float(lon[i]), 6)},
                "snow": bool(rows["contains_seasonal_snow"][i]),
                "cloud": bool(rows["contains_cloud_or_shadow"][i]),
            }
        )
        out[-1]["flags"] = flags(out[-1])
    return out


def flags(payload: dict[str, Any]) -> list[str]:
    """The boolean flags as a keyword list, which is what filters use: qdrant-edge-py 0.9 turns a boolean
    `MatchValue` into an integer that never matches a boolean payload."""
    return [name for name in ("snow", "cloud") if payload.get(name)]


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, np.datetime64):
        value = value.astype("datetime64[ms]").astype(datetime)
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if not isinstance(value, datetime):
        raise ValueError(f"s2_acquisition: expected a timestamp, got {value!r}")
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# Payload fields users filter by, and the index type each gets.
PAYLOAD_INDEXES = {
    "patch_id": "keyword",
    "labels": "keyword",
    "split": "keyword",
    "country": "keyword",
    "tile": "keyword",
    "season": "keyword",
    "date": "datetime",
    "location": "geo",
    "flags": "keyword",
}


class Near(BaseModel):
    """Within `radius_km` of a point."""

    model_config = ConfigDict(extra="forbid")
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    radius_km: float = Field(gt=0, le=5000)


def _one_or_many(item: dict[str, Any]) -> WithJsonSchema:
    """The documented schema of a filter list: one value, or up to MAX_FILTER_VALUES distinct values (duplicates are
    dropped before the count), each `item` (a string of at most MAX_FILTER_VALUE_CHARS); or null."""
    return WithJsonSchema(
        {"anyOf": [{"type": "array", "items": item, "maxItems": MAX_FILTER_VALUES}, item, {"type": "null"}]}
    )


_TEXT = {"type": "string", "maxLength": MAX_FILTER_VALUE_CHARS}
FilterValues = Annotated[list[str] | None, _one_or_many(_TEXT)]
SplitValues = Annotated[list[Split] | None, _one_or_many({"type": "string", "enum": list(get_args(Split))})]
SeasonValues = Annotated[list[Season] | None, _one_or_many({"type": "string", "enum": list(get_args(Season))})]


class SearchFilter(BaseModel):
    """Payload filter for a search; every field set must hold (AND). Lists within a field are alternatives (OR),
    except `labels_all`."""

    model_config = ConfigDict(extra="forbid")
    labels_any: FilterValues = Field(None, description="at least one of these labels")
    labels_all: FilterValues = Field(None, description="every one of these labels")
    split: SplitValues = None
    country: FilterValues = None
    tile: FilterValues = None
    season: SeasonValues = None
    date_from: datetime | date | None = Field(None, description="acquired on or after (date or RFC 3339)")
    date_to: datetime | date | None = Field(None, description="acquired on or before (a date includes that day)")
    snow: bool | None = Field(None, description="true: only snow-covered pairs, false: none")
    cloud: bool | None = Field(None, description="true: only cloudy pairs, false: none")
    near: Near | None = None

    @field_validator("split", "country", "tile", "season", "labels_any", "labels_all", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("split", "country", "tile", "season", "labels_any", "labels_all")
    @classmethod
    def _deduplicated_and_capped(cls, v: list[str] | None) -> list[str] | None:
        """Duplicates dropped (first kept), then at most MAX_FILTER_VALUES values of MAX_FILTER_VALUE_CHARS each."""
        if v is None:
            return v
        v = list(dict.fromkeys(v))
        if len(v) > MAX_FILTER_VALUES:
            raise ValueError(f"{len(v)} distinct values; at most {MAX_FILTER_VALUES} are accepted")
        long = next((x for x in v if len(x) > MAX_FILTER_VALUE_CHARS), None)
        if long is not None:
            raise ValueError(f"a value of {len(long)} characters; at most {MAX_FILTER_VALUE_CHARS} are accepted")
        return v

    @field_validator("date_from", "date_to", mode="before")
    @classmethod
    def _bare_date(cls, v: Any) -> Any:
        """`2017-06-13` is a date (a `date_to` then includes that day), not midnight: pydantic would try the
        datetime first and take it as 00:00."""
        if isinstance(v, str) and len(v) == 10 and v[4] == "-" and v[7] == "-":
            try:
                return date.fromisoformat(v)
            except ValueError:
                return v  # pydantic's own message names the field
        return v

    @field_validator("labels_any", "labels_all")
    @classmethod
    def _known_labels(cls, v: list[str] | None) -> list[str] | None:
        unknown = sorted(set(v or ()) - KNOWN_LABELS)
        if unknown:
            raise ValueError(f"unknown label(s) {unknown}; expected names of the 19- or 43-class nomenclature")
        return v

    @model_validator(mode="after")
    def _dates_in_order(self) -> SearchFilter:
        lo, hi = self.bounds()
        if lo and hi and lo > hi:
            raise ValueError(f"date_from ({lo}) is after date_to ({hi})")
        return self

    def bounds(self) -> tuple[str | None, str | None]:
        """The date range as RFC 3339 strings (a bare `date_to` date includes the whole day)."""
        return _rfc3339(self.date_from, end=False), _rfc3339(self.date_to, end=True)

    def conditions(self) -> list[tuple[Any, ...]]:
        """Engine-neutral conditions: ("any", key, values), ("value", key, value), ("range", key, gte, lte),
        ("near", key, lat, lon, metres), ("flag", "flags", name, present); all must hold."""
        out: list[tuple[Any, ...]] = []
        if self.labels_any:
            out.append(("any", "labels", list(self.labels_any)))
        for label in self.labels_all or ():
            out.append(("value", "labels", label))
        for key in ("split", "country", "tile", "season"):
            values = getattr(self, key)
            if values:
                out.append(("any", key, list(values)))
        for key in ("snow", "cloud"):
            if getattr(self, key) is not None:
                out.append(("flag", "flags", key, bool(getattr(self, key))))
        lo, hi = self.bounds()
        if lo or hi:
            out.append(("range", "date", lo, hi))
        if self.near:
            out.append(("near", "location", self.near.lat, self.near.lon, self.near.radius_km * 1000.0))
        return out


def _rfc3339(value: datetime | date | None, end: bool) -> str | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.combine(value, time.max if end else time.min)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # an offset that moves year 1 or 9999 out of range: the range is open on that side
        value = datetime.min if value.year == 1 else datetime.max
    return f"{value.year:04d}" + value.strftime("-%m-%dT%H:%M:%S.%fZ")  # %Y does not pad years before 1000


class Hit(BaseModel):
    patch_id: str
    score: float
    payload: dict[str, Any]


class IndexRecord(BaseModel):
    """What an index returns for a patch id: payload and (when asked for) vectors."""

    patch_id: str
    payload: dict[str, Any]
    vectors: dict[str, list[float]] = Field(default_factory=dict)
