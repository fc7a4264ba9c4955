"""BigEarthNet v1.0 extracted: one folder per patch under BigEarthNet-v1.0/ and BigEarthNet-S1-v1.0/ (FACTS.md 1.2)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from fsspec import AbstractFileSystem

from bigearth.archive.layouts import register_layout
from bigearth.archive.layouts.base import ArchiveLayout
from bigearth.archive.metadata import v1_table
from bigearth.core.storage import StorageOptions, join

V1_S2_DIR = "BigEarthNet-v1.0"  # the S2 v1 archive's top folder is NOT BigEarthNet-S2-v1.0
V1_S1_DIR = "BigEarthNet-S1-v1.0"


@register_layout
class V1Folders(ArchiveLayout):
    name = "v1"
    version = "v1"
    priority = 10

    @classmethod
    def detect(cls, fs: AbstractFileSystem, root: str) -> bool:
        return bool(fs.exists(join(root, V1_S2_DIR)) or fs.exists(join(root, V1_S1_DIR)))

    def catalogue_table(
        self, fs: AbstractFileSystem, archive: str, lists: str | None, storage: StorageOptions | None
    ) -> pa.Table:
        return v1_table(archive, lists, storage)

    def folders(self, pairs: pa.Table) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
        s1 = pc.if_else(pc.equal(pairs["s1_name"], ""), pa.scalar(None, pa.string()), pairs["s1_name"])
        return _under(join(self.root, V1_S2_DIR), pairs["patch_id"]), _under(join(self.root, V1_S1_DIR), s1)

    def s2_dir(self, patch_id: str) -> str:
        return join(self.root, V1_S2_DIR, patch_id)

    def s1_dir(self, s1_name: str) -> str:
        return join(self.root, V1_S1_DIR, s1_name)

    def s2_json(self, patch_id: str) -> str | None:
        return join(self.s2_dir(patch_id), f"{patch_id}_labels_metadata.json")

    def s1_json(self, s1_name: str) -> str | None:
        return join(self.s1_dir(s1_name), f"{s1_name}_labels_metadata.json")


def _under(folder: str, names: pa.ChunkedArray) -> pa.ChunkedArray:
    """`folder/<name>` for every name (null stays null)."""
    return pc.binary_join_element_wise(pa.scalar(folder + "/"), names, "")
