"""BigEarthNet v2.0 (reBEN) as published on Zenodo (record 10891137): one zstd frame of a GNU tar per download.

FACTS.md 2.5: members `BigEarthNet-S2/<product>/<patch>/<patch>_<band>.tif` sorted by path (a patch's bands are
adjacent), S1 likewise by scene; the two are not in the same pair order, `metadata.parquet` pairs them.
"""

from __future__ import annotations

import pyarrow as pa
from fsspec import AbstractFileSystem

from bigearth.archive.layouts import register_layout
from bigearth.archive.layouts.base import Download
from bigearth.archive.layouts.downloads import DownloadsLayout
from bigearth.archive.layouts.v2 import V2_REFERENCE_MAPS_DIR, V2_S1_DIR, V2_S2_DIR, V2Folders
from bigearth.archive.metadata import v2_table
from bigearth.core.storage import StorageOptions, join

V2_DOWNLOADS = (
    Download("BigEarthNet-S2.tar.zst", V2_S2_DIR, "s2", "zstd", "2245ed2d1a93f6ce637d839bc856396e", 63_251_710_377),
    Download("BigEarthNet-S1.tar.zst", V2_S1_DIR, "s1", "zstd", "a55eaa2cdf6a917e296bd6601ec1e348", 54_439_153_171),
    Download(
        "Reference_Maps.tar.zst",
        V2_REFERENCE_MAPS_DIR,
        "reference_maps",
        "zstd",
        "95d85a222fa983faddcac51a19f28917",
        282_391_301,
        required=False,
    ),
)


@register_layout
class V2Downloads(DownloadsLayout):
    name = "v2-downloads"
    version = "v2"
    priority = 30
    downloads = V2_DOWNLOADS
    tree = V2Folders

    def probe(self, fs: AbstractFileSystem) -> None:
        self.reference_maps = bool(fs.exists(join(self.root, V2_DOWNLOADS[2].name)))

    def catalogue_table(
        self, fs: AbstractFileSystem, archive: str, lists: str | None, storage: StorageOptions | None
    ) -> pa.Table:
        return v2_table(fs, self.root)
