"""What both download layouts share: members named as in the extracted folders, found in the download of their
top folder. A pair's file is located as `<download file>:<member>` (e.g.
`BigEarthNet-S2.tar.zst:BigEarthNet-S2/<product>/<patch>/<patch>_B02.tif`), which every message then names."""

from __future__ import annotations

from typing import ClassVar

from fsspec import AbstractFileSystem

from bigearth.archive.layouts.base import ArchiveLayout, Download
from bigearth.core.storage import join


class DownloadsLayout(ArchiveLayout):
    """The published tar downloads at `root`, read as streams (bigearth.archive.staging)."""

    #: the extracted layout whose relative paths are the member names
    tree: ClassVar[type[ArchiveLayout]]

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self._tree = self.tree("")
        self._by_top = {d.top: d for d in self.downloads}

    @classmethod
    def detect(cls, fs: AbstractFileSystem, root: str) -> bool:
        return any(fs.exists(join(root, d.name)) for d in cls.downloads if d.required)

    def download_of(self, member: str) -> Download | None:
        return self._by_top.get(member.split("/", 1)[0])

    def locate(self, member: str) -> str:
        d = self.download_of(member)
        assert d is not None, member
        return f"{d.name}:{member}"

    def s2_dir(self, patch_id: str) -> str:
        return self.locate(self._tree.s2_dir(patch_id))

    def s1_dir(self, s1_name: str) -> str:
        return self.locate(self._tree.s1_dir(s1_name))

    def s2_json(self, patch_id: str) -> str | None:
        rel = self._tree.s2_json(patch_id)
        return self.locate(rel) if rel else None

    def s1_json(self, s1_name: str) -> str | None:
        rel = self._tree.s1_json(s1_name)
        return self.locate(rel) if rel else None

    def reference_map(self, patch_id: str) -> str | None:
        rel = self._tree.reference_map(patch_id)
        return self.locate(rel) if rel and self.download_of(rel) else None


def split_locator(locator: str) -> tuple[str, str]:
    """`<download>:<member>` -> (download file name, member name)."""
    name, member = locator.split(":", 1)
    return name, member
