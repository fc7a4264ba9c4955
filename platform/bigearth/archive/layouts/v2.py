"""BigEarthNet v2.0 (reBEN) extracted: BigEarthNet-S2/<product>/<patch>/, BigEarthNet-S1/<scene>/<patch>/."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from fsspec import AbstractFileSystem

from bigearth.archive.layouts import register_layout
from bigearth.archive.layouts.base import ArchiveLayout
from bigearth.archive.metadata import V2_METADATA, v2_table
from bigearth.archive.names import S1_RE, V1_S2_RE, V2_S2_RE, parse_s1, parse_s2
from bigearth.core.storage import StorageOptions, join

V2_S2_DIR = "BigEarthNet-S2"
V2_S1_DIR = "BigEarthNet-S1"
V2_REFERENCE_MAPS_DIR = "Reference_Maps"
V2_S2_DOWNLOAD = "BigEarthNet-S2.tar.zst"


@register_layout
class V2Folders(ArchiveLayout):
    name = "v2"
    version = "v2"
    priority = 20

    @classmethod
    def detect(cls, fs: AbstractFileSystem, root: str) -> bool:
        if fs.exists(join(root, V2_S2_DIR)):
            return True
        # metadata alone (every pair then quarantined as missing, with its path) unless downloads lie beside it
        return bool(fs.exists(join(root, V2_METADATA)) and not fs.exists(join(root, V2_S2_DOWNLOAD)))

    def catalogue_table(
        self, fs: AbstractFileSystem, archive: str, lists: str | None, storage: StorageOptions | None
    ) -> pa.Table:
        return v2_table(fs, self.root)

    def probe(self, fs: AbstractFileSystem) -> None:
        self.reference_maps = bool(fs.exists(join(self.root, V2_REFERENCE_MAPS_DIR)))

    def folders(self, pairs: pa.Table) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
        # the same folders as s2_dir / s1_dir (a test compares them row for row), for names parse_s2 / parse_s1 take
        s2 = _nested(join(self.root, V2_S2_DIR), pairs["patch_id"], 2, (V2_S2_RE.pattern, V1_S2_RE.pattern))
        s1 = _nested(join(self.root, V2_S1_DIR), pairs["s1_name"], 3, (S1_RE.pattern,))
        return s2, s1

    def s2_dir(self, patch_id: str) -> str:
        return join(self.root, V2_S2_DIR, parse_s2(patch_id).tile_product, patch_id)

    def s1_dir(self, s1_name: str) -> str:
        return join(self.root, V2_S1_DIR, parse_s1(s1_name).scene, s1_name)

    def reference_map(self, patch_id: str) -> str | None:
        return join(
            self.root, V2_REFERENCE_MAPS_DIR, parse_s2(patch_id).tile_product, patch_id, f"{patch_id}_reference_map.tif"
        )


def _nested(folder: str, names: pa.ChunkedArray, parts: int, patterns: tuple[str, ...]) -> pa.ChunkedArray:
    """`folder/<name minus its last `parts` underscore-separated parts>/<name>` for every name matching one of
    `patterns`; null for any other (and for null)."""
    ok = pc.match_substring_regex(names, patterns[0])
    for pattern in patterns[1:]:
        ok = pc.or_(ok, pc.match_substring_regex(names, pattern))
    group = pc.replace_substring_regex(names, f"(_[^_]*){{{parts}}}$", "")
    nested = pc.binary_join_element_wise(pa.scalar(folder), group, names, "/")
    return pc.if_else(pc.fill_null(ok, False), nested, pa.scalar(None, pa.string()))
