"""The rules of a shard set, in one place: which files a split has, which column holds a nomenclature's labels,
which nomenclatures a shard set can serve. Every reader asks a `ShardSet`.

    shards = ShardSet.open("s3://bucket/shards", storage)
    shards.splits                       # {"test": 1306, "train": 2800, "validation": 1305}: pairs per split
    shards.files("train")               # [ShardEntry(path, split, rows), ...]; an unknown split names those there are
    shards.label_column(43)             # "labels43", or a ShardFormatError when the set cannot have them

Labels: `labels` holds the 19 classes in every shard set; `labels43` the 43 CLC classes, in shard sets ingested from
a v1 archive only (v2 has no 43-class labels; its rows hold null there). The manifest's `source.layout` says which
archive a set came from; a manifest without one (older ingests) is taken at its word and its rows are checked as
they are read (`missing_labels`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fsspec import AbstractFileSystem

from bigearth.core.storage import StorageOptions, join, open_fs
from bigearth.shards.format import Manifest, ShardEntry, ShardFormatError

#: nomenclature -> the shard column of its labels.
LABEL_COLUMNS = {19: "labels", 43: "labels43"}
#: archive layouts (the manifest's `source.layout`) whose shards carry `labels43`; None: not recorded.
LAYOUTS_WITH_43 = ("v1", None)


class UnknownSplit(ShardFormatError, KeyError):
    """A split the shard set does not have (a `KeyError` too: a lookup by name that failed)."""

    def __str__(self) -> str:
        return str(self.args[0])  # a KeyError's str() would quote the message


def label_column(nomenclature: int) -> str:
    """The column of a nomenclature's labels: `labels` (19 classes) or `labels43` (43, v1 shard sets)."""
    try:
        return LABEL_COLUMNS[nomenclature]
    except (KeyError, TypeError):
        raise ValueError(f"nomenclature {nomenclature}: expected {' or '.join(map(str, LABEL_COLUMNS))}") from None


def nomenclature_of(columns: Iterable[str]) -> int:
    """The nomenclature whose label column is among `columns` (the 19 classes when both are)."""
    have = set(columns)
    for n, column in LABEL_COLUMNS.items():
        if column in have:
            return n
    raise ShardFormatError(f"no label column among {sorted(have)}; expected one of {sorted(LABEL_COLUMNS.values())}")


def missing_labels(where: str, nomenclature: int, found: str) -> ShardFormatError:
    """The one error for labels a shard set does not have: `found` says what was found instead."""
    return ShardFormatError(
        f"{where}: nomenclature {nomenclature} asked, but {found}; 43-class labels exist only in shards ingested "
        f"from a v1 archive (column {LABEL_COLUMNS[43]}): ingest a v1 archive for them, or use nomenclature 19"
    )


@dataclass(frozen=True)
class ShardSet:
    """A shard set read through its manifest (`url`: as given; `root`: the path on its filesystem)."""

    url: str
    root: str
    manifest: Manifest

    @classmethod
    def open(cls, url: str, storage: StorageOptions | None = None) -> ShardSet:
        fs, root = open_fs(url, storage)
        return cls.load(fs, root, url)

    @classmethod
    def load(cls, fs: AbstractFileSystem, root: str, url: str | None = None) -> ShardSet:
        return cls(url or root, root, Manifest.load(fs, root))

    @property
    def entries(self) -> tuple[ShardEntry, ...]:
        """Every shard file, in manifest order."""
        return tuple(self.manifest.shards)

    @property
    def splits(self) -> dict[str, int]:
        """Pairs per split, of the splits that have shards (sorted by name)."""
        out: dict[str, int] = {}
        for e in sorted(self.entries, key=lambda e: e.split):
            out[e.split] = out.get(e.split, 0) + e.rows
        return out

    @property
    def layout(self) -> str | None:
        """The layout of the archive the set was ingested from (`v1`, `v2`), None where the manifest does not say."""
        layout = self.manifest.source.get("layout")
        return None if layout is None else str(layout)

    def files(self, split: str | Sequence[str] | None = None) -> list[ShardEntry]:
        """The shard files of a split (several: a list; None: every split), in manifest order. A split the set does
        not have is an `UnknownSplit` naming it and those there are; so is a selection of no file at all."""
        wanted = None if split is None else {split} if isinstance(split, str) else set(split)
        known = sorted(self.splits)
        missing = sorted(wanted - set(known)) if wanted is not None else []
        selected = [e for e in self.entries if wanted is None or e.split in wanted]
        if missing or not selected:
            asked = "(any)" if wanted is None else ", ".join(map(repr, missing)) or "(none asked)"
            raise UnknownSplit(f"{self.url}: no shards for split {asked}; the shard set has {known}")
        return selected

    def paths(self, split: str | Sequence[str] | None = None) -> list[str]:
        """The paths (on the set's filesystem) of `files(split)`."""
        return [join(self.root, e.path) for e in self.files(split)]

    def supports(self, nomenclature: int) -> bool:
        """Whether the set holds labels of `nomenclature`: 19 always, 43 when ingested from a v1 archive (or when
        the manifest does not say: its rows are checked as they are read)."""
        label_column(nomenclature)
        return nomenclature == 19 or self.layout in LAYOUTS_WITH_43

    def label_column(self, nomenclature: int) -> str:
        """The column holding `nomenclature`'s labels; a `ShardFormatError` when the set does not have them."""
        column = label_column(nomenclature)
        if not self.supports(nomenclature):
            raise missing_labels(self.url, nomenclature, f"the shard set was ingested from a {self.layout} archive")
        return column
