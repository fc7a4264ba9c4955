"""The interface every archive layout implements: detect it, catalogue it, say where a pair's bytes come from.

A layout is one way the archive is laid out at a root: the extracted folders of v1 or v2, or the published
downloads of either (a few `.tar.zst` / `.tar.gz` files read as streams, never extracted). Register a new one with
`@register_layout` in its own module; `detect_layout` tries the registered layouts by `priority`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pyarrow as pa
from fsspec import AbstractFileSystem

from bigearth.core.bands import S1_BANDS, S2_BANDS
from bigearth.core.storage import StorageOptions, join

Version = Literal["v1", "v2"]


@dataclass(frozen=True)
class Download:
    """One published download file: a tar stream whose members all lie under `top/`."""

    name: str  # the published file name, e.g. BigEarthNet-S2.tar.zst
    top: str  # the top folder of its members, e.g. BigEarthNet-S2
    kind: Literal["s2", "s1", "reference_maps"]
    compression: Literal["zstd", "gzip"]
    md5: str  # of the published file (FACTS.md 1.1, 2.5)
    size: int | None = None  # bytes of the published file, where known
    required: bool = True


class ArchiveLayout(ABC):
    """Paths of one archive at `root` (a protocol-less fsspec path), and how to read its catalogue."""

    #: the registry key (`--layout`), e.g. "v2" or "v2-downloads"
    name: ClassVar[str]
    #: the archive version: decides where labels come from and what the manifest records as the layout
    version: ClassVar[Version]
    #: detection order (lower first)
    priority: ClassVar[int] = 100
    #: the published download files this layout reads (empty for extracted folders)
    downloads: ClassVar[tuple[Download, ...]] = ()

    def __init__(self, root: str) -> None:
        self.root = root
        #: whether the archive holds reference maps (see `probe`): each pair then has one more file
        self.reference_maps = False

    def probe(self, fs: AbstractFileSystem) -> None:
        """Look at the optional parts the archive at `root` holds (reference maps; none unless a layout says)."""
        self.reference_maps = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.root == self.root  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.root))

    @classmethod
    @abstractmethod
    def detect(cls, fs: AbstractFileSystem, root: str) -> bool:
        """Whether `root` holds an archive of this layout."""

    @abstractmethod
    def catalogue_table(
        self, fs: AbstractFileSystem, archive: str, lists: str | None, storage: StorageOptions | None
    ) -> pa.Table:
        """One row per pair (bigearth.archive.metadata.CATALOGUE_SCHEMA), from the published metadata."""

    def folders(self, pairs: pa.Table) -> tuple[pa.ChunkedArray, pa.ChunkedArray] | None:
        """Per catalogue row of `pairs`, the folder of its S2 patch and the folder of its S1 partner (`s2_dir`,
        `s1_dir`, computed over the whole column at once; null where the row names no partner or a name the layout
        cannot place), so that what the archive holds is found by listing folders (bigearth.archive.presence);
        None where a pair has no folder of its own (the published downloads)."""
        return None

    # ------------------------------------------------------------------ where each file of a pair lives
    @abstractmethod
    def s2_dir(self, patch_id: str) -> str: ...

    @abstractmethod
    def s1_dir(self, s1_name: str) -> str: ...

    def s2_band(self, patch_id: str, band: str) -> str:
        return join(self.s2_dir(patch_id), f"{patch_id}_{band}.tif")

    def s1_band(self, s1_name: str, band: str) -> str:
        return join(self.s1_dir(s1_name), f"{s1_name}_{band}.tif")

    def s2_json(self, patch_id: str) -> str | None:
        """The patch's `_labels_metadata.json` where the layout has one (v1), else None."""
        return None

    def s1_json(self, s1_name: str) -> str | None:
        return None

    def reference_map(self, patch_id: str) -> str | None:
        """The patch's reference map where the layout has one (v2), else None."""
        return None

    def files(self, row: dict[str, Any]) -> dict[str, str]:
        """Every file of one catalogue row: key (band name, `s2_json`, `s1_json`, `reference_map`) -> where its
        bytes are."""
        out = {b.name: self.s2_band(row["patch_id"], b.name) for b in S2_BANDS}
        s1_name = row.get("s1_name")
        if s1_name:
            out.update({b.name: self.s1_band(s1_name, b.name) for b in S1_BANDS})
        s2_json = self.s2_json(row["patch_id"])
        if s2_json:
            out["s2_json"] = s2_json
            s1_json = self.s1_json(s1_name) if s1_name else None
            if s1_json:
                out["s1_json"] = s1_json
        reference_map = self.reference_map(row["patch_id"]) if self.reference_maps else None
        if reference_map:
            out["reference_map"] = reference_map
        return out
