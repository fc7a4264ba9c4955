"""Metadata subsets of a split: which pairs a run trains or evaluates on, by country and season, from the shards'
own metadata columns (`country`, and `s2_acquisition` whose month gives the season, `bigearth.core.seasons`).

    subset = MetadataSubset(countries={"exclude": ["Portugal"]}, seasons={"include": ["summer"]})
    keep = subset.mask(table)                      # np.ndarray[bool], one per row of a table with those columns
    check_selected(subset, "train", countries, acquisitions, keep)   # EmptySubsetError when nothing is kept

Each filter is None (everything), `{"include": [...]}` or `{"exclude": [...]}`; both filters must hold for a row
to be selected. Country names are those of the archive's metadata (`Austria`, `Portugal`, ...); a name no pair
carries selects nothing, and a subset that selects nothing in a split is an error naming the filter, the split and
the values the split has.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bigearth.core.seasons import SEASONS, season

#: The shard columns a subset reads.
SUBSET_COLUMNS = ("country", "s2_acquisition")


class EmptySubsetError(ValueError):
    """A metadata subset selects no pair of a split."""


class ValueFilter(BaseModel):
    """Exactly one of `include` (keep only these values) or `exclude` (keep all but these)."""

    model_config = ConfigDict(extra="forbid")

    include: list[str] | None = Field(None, min_length=1, description="keep only pairs with one of these values")
    exclude: list[str] | None = Field(None, min_length=1, description="keep every pair except those with these")

    @model_validator(mode="after")
    def _one(self) -> ValueFilter:
        if (self.include is None) == (self.exclude is None):
            raise ValueError("give exactly one of include or exclude")
        return self

    @property
    def mode(self) -> str:
        return "include" if self.include is not None else "exclude"

    @property
    def values(self) -> list[str]:
        return list(self.include if self.include is not None else self.exclude or [])

    def keeps(self, column: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """One bool per value of `column` (nulls are never included, never excluded)."""
        hit = pc.fill_null(pc.is_in(column, value_set=pa.array(self.values, pa.string())), False)
        keep = hit if self.include is not None else pc.invert(hit)
        return np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool)


class MetadataSubset(BaseModel):
    """Pairs selected by country and season (`data.countries`, `data.seasons`; `bigearth evaluate --countries ...`)."""

    model_config = ConfigDict(extra="forbid")

    countries: ValueFilter | None = Field(
        None, description="{include: [names]} or {exclude: [names]}: countries of the archive's metadata (Austria, ...)"
    )
    seasons: ValueFilter | None = Field(
        None,
        description="{include: [...]} or {exclude: [...]} of winter (Dec-Feb), spring, summer, autumn: the season of "
        "the Sentinel-2 acquisition",
    )

    @field_validator("seasons")
    @classmethod
    def _known_seasons(cls, v: ValueFilter | None) -> ValueFilter | None:
        if v is not None:
            unknown = [s for s in v.values if s not in SEASONS]
            if unknown:
                raise ValueError(f"unknown season(s) {unknown}: the seasons are {list(SEASONS)}")
        return v

    @classmethod
    def of(
        cls,
        countries: Sequence[str] | None = None,
        exclude_countries: Sequence[str] | None = None,
        seasons: Sequence[str] | None = None,
        exclude_seasons: Sequence[str] | None = None,
    ) -> MetadataSubset:
        """From include/exclude lists (the CLI's options); giving both of a pair is an error."""

        def one(include: Sequence[str] | None, exclude: Sequence[str] | None) -> dict[str, Any] | None:
            if not include and not exclude:
                return None
            return {k: list(v) for k, v in (("include", include), ("exclude", exclude)) if v}

        return cls.model_validate(
            {"countries": one(countries, exclude_countries), "seasons": one(seasons, exclude_seasons)}
        )

    @property
    def active(self) -> bool:
        """Whether the subset filters anything at all."""
        return self.countries is not None or self.seasons is not None

    def mask(self, table: pa.Table) -> np.ndarray:
        """One bool per row of `table` (which has the columns `SUBSET_COLUMNS` the filters need): selected or not."""
        keep = np.ones(table.num_rows, dtype=bool)
        if self.countries is not None:
            keep &= self.countries.keeps(table.column("country"))
        if self.seasons is not None:
            keep &= self.seasons.keeps(season_column(table.column("s2_acquisition")))
        return keep

    def describe(self) -> str:
        """The filters in words, as the config and the CLI spell them: `data.countries exclude ['Portugal']`."""
        parts = [
            f"data.{name} {f.mode} {f.values}"
            for name, f in (("countries", self.countries), ("seasons", self.seasons))
            if f is not None
        ]
        return "; ".join(parts) or "all pairs"


def season_column(acquisitions: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The season name of each timestamp (null stays null), vectorised over the month."""
    months = pc.month(acquisitions)
    by_month = pa.array([season(m) for m in range(1, 13)], pa.string())
    return pc.take(by_month, pc.subtract(months, 1))


def check_selected(subset: MetadataSubset, split: str, table: pa.Table, mask: np.ndarray | None = None) -> np.ndarray:
    """The mask of `subset` over `table` (the split's metadata columns), or an `EmptySubsetError` when it selects
    nothing: naming the filter, the split and the values there are, with their pair counts."""
    keep = subset.mask(table) if mask is None else mask
    if keep.any() or not subset.active:
        return keep
    values: list[str] = []
    for name, f, column in (
        ("countries", subset.countries, lambda: table.column("country")),
        ("seasons", subset.seasons, lambda: season_column(table.column("s2_acquisition"))),
    ):
        if f is not None:
            counts = Counter("unknown" if v is None else str(v) for v in column().to_pylist())
            there = ", ".join(f"{k} ({n})" for k, n in sorted(counts.items())) or "none: the split is empty"
            values.append(f"its {name}: {there}")
    raise EmptySubsetError(f"{subset.describe()} selects no pair of split {split!r}; " + "; ".join(values))
