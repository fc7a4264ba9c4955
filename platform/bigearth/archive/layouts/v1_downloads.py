"""BigEarthNet v1.0 as published on Zenodo (record 12687186): one gzip stream of a tar per sensor (FACTS.md 1.1).

The S2 download's top folder is `BigEarthNet-v1.0/`, the S1 one's `BigEarthNet-S1-v1.0/`; labels are in the
per-patch JSON members; pairs, splits and flags come from the official lists (`--lists`).
"""

from __future__ import annotations

import pyarrow as pa
from fsspec import AbstractFileSystem

from bigearth.archive.layouts import register_layout
from bigearth.archive.layouts.base import Download
from bigearth.archive.layouts.downloads import DownloadsLayout
from bigearth.archive.layouts.v1 import V1_S1_DIR, V1_S2_DIR, V1Folders
from bigearth.archive.metadata import v1_table
from bigearth.core.storage import StorageOptions

V1_DOWNLOADS = (
    Download("BigEarthNet-S2-v1.0.tar.gz", V1_S2_DIR, "s2", "gzip", "5a64e9ce38deb036a435a7b59494924c"),
    Download("BigEarthNet-S1-v1.0.tar.gz", V1_S1_DIR, "s1", "gzip", "94ced73440dea8c7b9645ee738c5a172"),
)


@register_layout
class V1Downloads(DownloadsLayout):
    name = "v1-downloads"
    version = "v1"
    priority = 40
    downloads = V1_DOWNLOADS
    tree = V1Folders

    def catalogue_table(
        self, fs: AbstractFileSystem, archive: str, lists: str | None, storage: StorageOptions | None
    ) -> pa.Table:
        return v1_table(archive, lists, storage)
