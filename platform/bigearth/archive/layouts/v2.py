"""BigEarthNet v2.0 (reBEN) extracted: BigEarthNet-S2/<product>/<patch>/, BigEarthNet-S1/<scene>/<patch>/."""

from __future__ import annotations

import pyarrow as pa
from fsspec import AbstractFileSystem

from bigearth.archive.layouts import register_layout
from bigearth.archive.layouts.base import ArchiveLayout
from bigearth.archive.metadata import V2_METADATA, v2_table
from bigearth.archive.names import parse_s1, parse_s2
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

    def s2_dir(self, patch_id: str) -> str:
        return join(self.root, V2_S2_DIR, parse_s2(patch_id).tile_product, patch_id)

    def s1_dir(self, s1_name: str) -> str:
        return join(self.root, V2_S1_DIR, parse_s1(s1_name).scene, s1_name)

    def reference_map(self, patch_id: str) -> str | None:
        return join(
            self.root, V2_REFERENCE_MAPS_DIR, parse_s2(patch_id).tile_product, patch_id, f"{patch_id}_reference_map.tif"
        )
