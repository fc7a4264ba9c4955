"""Archive layouts behind one interface (`ArchiveLayout`), registered the way models are.

Built in: `v1` and `v2` (the extracted folders), `v1-downloads` and `v2-downloads` (the published tar files, read
as streams). A further layout is one new module with a `@register_layout` class.
"""

from __future__ import annotations

from fsspec import AbstractFileSystem

from bigearth.archive.layouts.base import ArchiveLayout, Download, Version
from bigearth.archive.metadata import ArchiveError

__all__ = ["ArchiveLayout", "Download", "Version", "detect_layout", "layout_for", "list_layouts", "register_layout"]

_REGISTRY: dict[str, type[ArchiveLayout]] = {}


def register_layout(cls: type[ArchiveLayout]) -> type[ArchiveLayout]:
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin() -> None:
    from bigearth.archive.layouts import v1, v1_downloads, v2, v2_downloads  # noqa: F401  (register them)


def list_layouts() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def layout_for(name: str, root: str) -> ArchiveLayout:
    """The registered layout `name` at `root`."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ArchiveError(f"layout must be auto or one of {', '.join(sorted(_REGISTRY))}, got {name!r}")
    return _REGISTRY[name](root)


def detect_layout(fs: AbstractFileSystem, root: str) -> ArchiveLayout:
    """The first registered layout (by priority) that recognises `root`."""
    _load_builtin()
    for cls in sorted(_REGISTRY.values(), key=lambda c: (c.priority, c.name)):
        if cls.detect(fs, root):
            return cls(root)
    raise ArchiveError(
        f"{root}: not a BigEarthNet archive root. Expected either BigEarthNet-v1.0/ and BigEarthNet-S1-v1.0/ "
        "(v1.0) or metadata.parquet with BigEarthNet-S2/ and BigEarthNet-S1/ (v2.0, reBEN), or the published "
        "downloads under their names (BigEarthNet-S2.tar.zst, BigEarthNet-S1.tar.zst, metadata.parquet; "
        "BigEarthNet-S2-v1.0.tar.gz, BigEarthNet-S1-v1.0.tar.gz)"
    )
