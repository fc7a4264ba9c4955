"""Where each file of a pair lives, for both archive layouts (FACTS.md 1.2 and 2.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bigearth.archive.names import parse_s1, parse_s2
from bigearth.storage import join

Version = Literal["v1", "v2"]

V1_S2_DIR = "BigEarthNet-v1.0"  # the S2 v1 archive's top folder is NOT BigEarthNet-S2-v1.0
V1_S1_DIR = "BigEarthNet-S1-v1.0"
V2_S2_DIR = "BigEarthNet-S2"
V2_S1_DIR = "BigEarthNet-S1"
V2_METADATA = "metadata.parquet"
V2_SNOW_CLOUD_METADATA = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"


@dataclass(frozen=True)
class Layout:
    """Paths of one archive: `root` is a protocol-less fsspec path."""

    version: Version
    root: str

    def s2_dir(self, patch_id: str) -> str:
        if self.version == "v1":
            return join(self.root, V1_S2_DIR, patch_id)
        return join(self.root, V2_S2_DIR, parse_s2(patch_id).tile_product, patch_id)

    def s1_dir(self, s1_name: str) -> str:
        if self.version == "v1":
            return join(self.root, V1_S1_DIR, s1_name)
        return join(self.root, V2_S1_DIR, parse_s1(s1_name).scene, s1_name)

    def s2_band(self, patch_id: str, band: str) -> str:
        return join(self.s2_dir(patch_id), f"{patch_id}_{band}.tif")

    def s1_band(self, s1_name: str, band: str) -> str:
        return join(self.s1_dir(s1_name), f"{s1_name}_{band}.tif")

    def s2_json(self, patch_id: str) -> str | None:
        """v1 `_labels_metadata.json` of the S2 patch; v2 has no JSON files."""
        return join(self.s2_dir(patch_id), f"{patch_id}_labels_metadata.json") if self.version == "v1" else None

    def s1_json(self, s1_name: str) -> str | None:
        return join(self.s1_dir(s1_name), f"{s1_name}_labels_metadata.json") if self.version == "v1" else None
