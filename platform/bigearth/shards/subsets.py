"""Metadata subsets of a split: which pairs a run trains or evaluates on, by country and season, from the shards'
own metadata columns (`country`, and `s2_acquisition` whose month gives the season, `bigearth.core.seasons`).

    subset = MetadataSubset(countries={"exclude": ["Portugal"]}, seasons={"include": ["summer"]})
    keep = subset.mask(table)                      # np.ndarray[bool], one per row of a table with those columns
    check_selected(subset, "train", table)         # the mask, or EmptySubsetError / UnknownSubsetValueError

Each filter is None (everything), `{"include": [...]}` or `{"exclude": [...]}`; both filters must hold for a row
to be selected. Country names are those of the archive's metadata (`Austria`, `Portugal`, ...); a name no pair
of the splits a run reads carries is an error (a misspelt name would otherwise select nothing, or keep everything
when excluded), and so is a subset that selects nothing in a split; both name the filter, the split and the values
the split has.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bigearth.core.seasons import SEASONS, season
from bigearth.shards.format import ShardFormatError, open_for_reading, open_shard

#: The shard columns a subset reads.
SUBSET_COLUMNS = ("country", "s2_acquisition")


class EmptySubsetError(ValueError):
    """A metadata subset selects no pair of a split."""


class UnknownSubsetValueError(ValueError):
    """A metadata subset names a country that no pair of the splits it is applied to carries (a misspelt name)."""


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


class SeasonFilter(ValueFilter):
    """A `ValueFilter` of season names (`bigearth.core.seasons.SEASONS`)."""

    @model_validator(mode="after")
    def _known(self) -> SeasonFilter:
        unknown = [s for s in self.values if s not in SEASONS]
        if unknown:
            raise ValueError(f"unknown season(s) {unknown}: the seasons are {list(SEASONS)}")
        return self


class MetadataSubset(BaseModel):
    """Pairs selected by country and season (`data.countries`, `data.seasons`; `bigearth evaluate --countries ...`)."""

    model_config = ConfigDict(extra="forbid")

    countries: ValueFilter | None = Field(
        None, description="{include: [names]} or {exclude: [names]}: countries of the archive's metadata (Austria, ...)"
    )
    seasons: SeasonFilter | None = Field(
        None,
        description="{include: [...]} or {exclude: [...]} of winter (Dec-Feb), spring, summer, autumn: the season of "
        "the Sentinel-2 acquisition",
    )

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


def subset_record(subset: MetadataSubset | None) -> dict[str, Any] | None:
    """A subset as metrics.json records it (classification and segmentation alike): its filters as the config
    spells them, `{"countries": {"exclude": ["Portugal"]}}`, or None when nothing is filtered."""
    return subset.model_dump(exclude_none=True) if subset is not None and subset.active else None


def season_column(acquisitions: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The season name of each timestamp (null stays null), vectorised over the month."""
    months = pc.month(acquisitions)
    by_month = pa.array([season(m) for m in range(1, 13)], pa.string())
    return pc.take(by_month, pc.subtract(months, 1))


def _counts(values: list[Any]) -> str:
    counts = Counter("unknown" if v is None else str(v) for v in values)
    return ", ".join(f"{k} ({n})" for k, n in sorted(counts.items())) or "none: the split is empty"


def check_values(subset: MetadataSubset, split: str, table: pa.Table) -> None:
    """An `UnknownSubsetValueError` when `subset` includes or excludes a country that no pair of `table` (the
    metadata columns of `split`, several splits joined with ", " when a run reads them together) carries: naming
    each such value and the countries there are, with their pair counts. Seasons are checked against `SEASONS`
    when the subset is made; a valid season a split lacks is no typo (only an empty selection is an error).

    Why per run and not per split: a leave-one-country-out run trains with `exclude: [X]` on its training and
    validation splits, and X may be in one and not the other; the trainer checks the two together
    (`bigearth.input.loader.subset_plans`), evaluation the split it evaluates."""
    f = subset.countries
    if f is None:
        return
    column = table.column("country")
    there = set(pc.unique(column).to_pylist())
    unknown = [v for v in f.values if v not in there]
    if unknown:
        raise UnknownSubsetValueError(
            f"{subset.describe()}: no pair of split {split!r} has country {', '.join(map(repr, unknown))}; its "
            f"countries: {_counts(column.to_pylist())}"
        )


def check_selected(
    subset: MetadataSubset, split: str, table: pa.Table, mask: np.ndarray | None = None, *, values: bool = True
) -> np.ndarray:
    """The mask of `subset` over `table` (the split's metadata columns), or an error: `EmptySubsetError` when
    nothing is selected, naming the filter, the split and the values there are, with their pair counts; else
    `UnknownSubsetValueError` for a country no pair carries (`check_values`; `values=False`: the caller checks
    them over the several splits a run reads)."""
    keep = subset.mask(table) if mask is None else mask
    if keep.any() or not subset.active:
        if values:
            check_values(subset, split, table)
        return keep
    found: list[str] = []
    for name, f, column in (
        ("countries", subset.countries, lambda: table.column("country")),
        ("seasons", subset.seasons, lambda: season_column(table.column("s2_acquisition"))),
    ):
        if f is not None:
            found.append(f"its {name}: {_counts(column().to_pylist())}")
    raise EmptySubsetError(f"{subset.describe()} selects no pair of split {split!r}; " + "; ".join(found))


def metadata_table(fs: Any, files: Sequence[tuple[str, Sequence[int]]], threads: int = 8) -> pa.Table:
    """The metadata columns `SUBSET_COLUMNS` of shard files `(path on the pyarrow filesystem fs, rows of each of
    its row groups as the manifest says)`, in order (`threads` files at a time: S3 latency)."""

    def read(path: str) -> pa.Table:
        with open_for_reading(fs, path) as f:
            return open_shard(f, path).read(columns=list(SUBSET_COLUMNS))

    with ThreadPoolExecutor(max(1, min(threads, len(files)))) as pool:
        tables = list(pool.map(read, [path for path, _ in files]))
    for (path, sizes), t in zip(files, tables, strict=True):
        if t.num_rows != sum(sizes):
            raise ShardFormatError(f"{path}: {t.num_rows} rows, the manifest says {sum(sizes)}: re-run the ingest")
    empty = pa.table({"country": pa.array([], pa.string()), "s2_acquisition": pa.array([], pa.timestamp("ms"))})
    return pa.concat_tables(tables) if tables else empty


def group_positions(keep: np.ndarray, files: Sequence[tuple[str, Sequence[int]]]) -> list[list[np.ndarray]]:
    """A mask over the rows of `files` (as `metadata_table` reads them) as the kept positions within each row group."""
    out: list[list[np.ndarray]] = []
    at = 0
    for _, sizes in files:
        groups = []
        for n in sizes:
            groups.append(np.flatnonzero(keep[at : at + n]))
            at += n
        out.append(groups)
    return out


def selected_rows(
    fs: Any, files: Sequence[tuple[str, Sequence[int]]], subset: MetadataSubset, split: str, threads: int = 8
) -> list[list[np.ndarray]]:
    """For each shard file `(path on the pyarrow filesystem fs, rows of each of its row groups as the manifest
    says)`, the positions within each row group of the rows `subset` selects. Only the metadata columns
    `SUBSET_COLUMNS` are read; an `UnknownSubsetValueError` or `EmptySubsetError` as `check_selected` says."""
    keep = check_selected(subset, split, metadata_table(fs, files, threads))
    return group_positions(keep, files)
