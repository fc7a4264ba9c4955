"""Pack an extracted archive into the published downloads, in their exact shape (FACTS.md 1.1, 2.5).

v2: `BigEarthNet-S2.tar.zst`, `BigEarthNet-S1.tar.zst` (and `Reference_Maps.tar.zst` when the folder has reference
maps): each ONE zstd frame (level 6) of a GNU tar built from the sorted file list, files only (no directory
entries), reproducible (mtime 0, owner 0/0, mode 0644), and the metadata parquet files beside them.
v1: `BigEarthNet-S2-v1.0.tar.gz` (top folder `BigEarthNet-v1.0/`) and `BigEarthNet-S1-v1.0.tar.gz`, one gzip
stream each; the official-format lists are copied to `lists/`.
Both: an `MD5SUMS` file (md5sum's format) states each download's md5, as a mirror would: a synthetic file under a
published name differs from the published digest by design, and the ingest checks it against this one instead.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterable
from typing import Any

from bigearth.archive.checksums import MD5SUMS, format_md5sums
from bigearth.archive.layouts.base import Download
from bigearth.archive.layouts.v1_downloads import V1_DOWNLOADS
from bigearth.archive.layouts.v2_downloads import V2_DOWNLOADS
from bigearth.archive.metadata import V2_METADATA, V2_SNOW_CLOUD_METADATA
from bigearth.core.storage import StorageOptions, join, open_fs

ZSTD_LEVEL = 6


def _files(folder: str, top: str) -> list[str]:
    """Every file under `folder/top`, as sorted member names (`top/...`)."""
    out: list[str] = []
    for dirpath, _dirs, names in os.walk(os.path.join(folder, top)):
        rel = os.path.relpath(dirpath, folder).replace(os.sep, "/")
        out.extend(f"{rel}/{n}" for n in names)
    return sorted(out)


def write_tar(f: Any, folder: str, members: Iterable[str]) -> None:
    """A reproducible GNU tar of `members` (paths relative to `folder`) streamed into the file object `f`."""
    with tarfile.open(fileobj=f, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        for name in members:
            with open(os.path.join(folder, name), "rb") as src:
                data = src.read()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = (
                len(data),
                0,
                0o644,
                0,
                0,
                "",
                "",
            )
            tar.addfile(info, io.BytesIO(data))


def write_download(out_file: Any, folder: str, download: Download) -> int:
    """One download file of `folder`'s files under `download.top`; returns the number of members."""
    members = _files(folder, download.top)
    if download.compression == "zstd":
        import zstandard

        with zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(out_file, closefd=False) as z:
            write_tar(z, folder, members)
    else:
        with gzip.GzipFile(fileobj=out_file, mode="wb", compresslevel=6, mtime=0) as g:
            write_tar(g, folder, members)
    return len(members)


def pack_archive(folder: str, out: str, version: str, storage: StorageOptions | None = None) -> dict[str, int]:
    """Write the downloads of the extracted local archive `folder` to `out` (any fsspec URL): name -> members."""
    fs, root = open_fs(out, storage)
    fs.makedirs(root, exist_ok=True)
    downloads = V2_DOWNLOADS if version == "v2" else V1_DOWNLOADS
    counts, digests = {}, {}
    for d in downloads:
        if not os.path.isdir(os.path.join(folder, d.top)):
            continue
        with fs.open(join(root, d.name), "wb") as f:
            counts[d.name] = write_download(f, folder, d)
        digests[d.name] = _md5(fs, join(root, d.name))
    with fs.open(join(root, MD5SUMS), "w") as f:
        f.write(format_md5sums(digests))
    extras = [V2_METADATA, V2_SNOW_CLOUD_METADATA] if version == "v2" else []
    for name in extras:
        if os.path.exists(os.path.join(folder, name)):
            fs.put_file(os.path.join(folder, name), join(root, name))
    lists = os.path.join(folder, "lists")
    if version == "v1" and os.path.isdir(lists):
        fs.makedirs(join(root, "lists"), exist_ok=True)
        for name in sorted(os.listdir(lists)):
            fs.put_file(os.path.join(lists, name), join(root, "lists", name))
    return counts


def _md5(fs: Any, path: str) -> str:
    h = hashlib.md5()
    with fs.open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()
