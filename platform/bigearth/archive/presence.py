"""What of a catalogue an extracted archive holds, found by listing its folders once, never by probing each pair.

The published metadata describes every pair of the archive; a folder may hold only part of it (a partial download,
a sample). Each pair has an S2 patch folder and an S1 partner folder (`ArchiveLayout.folders`); the folders that
hold them (v2: one per tile product or S1 scene; v1: the two top folders) are listed, each once, in a pool of
threads (one request each on object storage), those above them likewise, so the number of listings grows with
the folders present, not with the pairs described. A pair whose S2 folder is absent is quarantined as
`missing_file`, one whose S1 folder is absent as `missing_s1`, each naming what is absent, without any read;
only the others are read (a folder that is there but lacks a band file is found by the read, as before).

Not listed (every pair is read, as before): the published downloads (they have no folders: staging finds what each
holds) and archives over plain HTTP(S) (a server's index page is not a listing one can trust).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from fsspec import AbstractFileSystem

from bigearth.archive.layouts import ArchiveLayout
from bigearth.core.storage import join

#: folders listed at once (one request each on object storage)
LIST_THREADS = 16
#: catalogue rows handled at once: what is computed per row (folder paths, reasons) is held for this many only
CHUNK_ROWS = 1 << 14
#: protocols whose "folders" cannot be listed reliably: every pair is read instead
UNLISTABLE = ("http", "https")


@dataclass(frozen=True)
class Presence:
    """Per catalogue row: `no_s2`, its S2 patch folder is absent; `no_s1`, its S2 folder is there (or cannot be
    told) but its S1 partner's folder is absent. `listings`: folders listed to tell."""

    no_s2: pa.ChunkedArray
    no_s1: pa.ChunkedArray
    listings: int

    @property
    def read(self) -> pa.ChunkedArray:
        """Per catalogue row, whether to read it: its folders are there, or a listing cannot tell."""
        return pc.invert(self.missing)

    @property
    def missing(self) -> pa.ChunkedArray:
        return pc.or_(self.no_s2, self.no_s1)

    @property
    def count(self) -> int:
        """Pairs found absent."""
        return int(pc.sum(self.missing).as_py() or 0)


def listable(fs: AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return not any(p in UNLISTABLE for p in protocols)


def find_present(
    fs: AbstractFileSystem, layout: ArchiveLayout, pairs: pa.Table, threads: int = LIST_THREADS
) -> Presence | None:
    """Which pairs of `pairs` (catalogue rows) the archive at `layout.root` holds; None where it cannot be listed
    (then every pair is read)."""
    if not listable(fs) or layout.folders(pairs.slice(0, 0)) is None:
        return None
    lister = FolderLister(fs, layout.root, threads)
    no_s2: list[pa.Array] = []
    no_s1: list[pa.Array] = []
    for part in _chunks(pairs):
        folders = layout.folders(part)
        assert folders is not None
        a = lister.absent(folders[0])
        no_s2.append(a)
        no_s1.append(pc.and_(pc.invert(a), lister.absent(folders[1])))
    return Presence(_chunked(no_s2), _chunked(no_s1), lister.listings)


def missing_pairs(layout: ArchiveLayout, pairs: pa.Table, presence: Presence) -> Iterator[pa.Table]:
    """The pairs `presence` found absent, as quarantine rows (patch_id, kind, reason) in the order of `pairs`, a
    chunk at a time (their reasons are made here, for one chunk at once). Each names what is absent: the S2 folder,
    or the S1 partner in the words the read uses (bigearth.archive.reader) and its folder."""
    table = pairs.select(["patch_id", "s1_name"]).append_column("no_s2", presence.no_s2)
    table = table.append_column("missing", presence.missing)
    for chunk in _chunks(table):
        part = chunk.filter(chunk["missing"])
        if not part.num_rows:
            continue
        folders = layout.folders(part)
        assert folders is not None
        s2, s1 = folders
        no_s2 = part["no_s2"]
        vv = pc.binary_join_element_wise(s1, part["s1_name"], "/")
        s1_reason = pc.binary_join_element_wise(
            pa.scalar("missing S1 partner "), part["s1_name"], pa.scalar(": neither "), vv,
            pa.scalar("_VV.tif nor "), vv, pa.scalar("_VH.tif exists (no folder "), s1, pa.scalar(")"), "",
        )  # fmt: skip
        s2_reason = pc.binary_join_element_wise(pa.scalar("missing folder: "), s2, "")
        yield pa.table(
            {
                "patch_id": part["patch_id"],
                "kind": pc.if_else(no_s2, pa.scalar("missing_file"), pa.scalar("missing_s1")),
                "reason": pc.if_else(no_s2, s2_reason, s1_reason),
            }
        )


def _chunks(table: pa.Table) -> Iterator[pa.Table]:
    for start in range(0, table.num_rows, CHUNK_ROWS):
        yield table.slice(start, CHUNK_ROWS)


def _chunked(parts: list[pa.Array | pa.ChunkedArray]) -> pa.ChunkedArray:
    chunks = [c for p in parts for c in (p.chunks if isinstance(p, pa.ChunkedArray) else [p])]
    return pa.chunked_array(chunks, pa.bool_())


class FolderLister:
    """Lists folders under `root` (which exists: the catalogue was read from it), each at most once."""

    def __init__(self, fs: AbstractFileSystem, root: str, threads: int = LIST_THREADS) -> None:
        self.fs, self.root, self.threads = fs, root.rstrip("/") or "/", threads
        self._inside: dict[str, frozenset[str] | None] = {}  # folder -> the names in it; None: no such folder
        self._paths: dict[str, pa.Array] = {}  # folder -> the paths in it
        self.listings = 0  # folders listed so far (one `ls` each)

    def absent(self, paths: pa.ChunkedArray) -> pa.ChunkedArray:
        """Per path, True where it is not in its parent folder's listing; False where it is, or where the path is
        null (nothing to look for)."""
        parents = {p for p in pc.unique(pc.replace_substring_regex(paths, "/[^/]*$", "")).to_pylist() if p}
        self._list(parents)
        there = [self._paths_in(d) for d in sorted(parents)]
        found = pc.is_in(paths, value_set=pa.concat_arrays(there) if there else pa.array([], pa.string()))
        return pc.and_(pc.is_valid(paths), pc.invert(found))

    def _paths_in(self, folder: str) -> pa.Array:
        if folder not in self._paths:
            self._paths[folder] = pa.array([join(folder, n) for n in sorted(self._inside[folder] or ())], pa.string())
        return self._paths[folder]

    def _list(self, folders: set[str]) -> None:
        """List each of `folders` that exists and was not listed yet; whether it exists comes from its parent's
        listing (listed first, the same way), the root's from listing it."""
        todo = {f for f in folders if f not in self._inside}
        if not todo:
            return
        parents = {posixpath.dirname(f) for f in todo if f != self.root and f.startswith(self.root + "/")}
        self._list(parents)
        exists = [f for f in todo if self._exists(f)]
        for f in todo:
            self._inside.setdefault(f, None)
        self.listings += len(exists)
        if exists:
            with ThreadPoolExecutor(min(self.threads, len(exists))) as pool:
                for f, names in zip(exists, pool.map(self._ls, exists), strict=True):
                    self._inside[f] = names

    def _exists(self, folder: str) -> bool:
        if folder == self.root or not folder.startswith(self.root + "/"):
            return True  # the root (or a folder outside it, never asked for): listed as it is
        names = self._inside.get(posixpath.dirname(folder))
        return names is not None and posixpath.basename(folder) in names

    def _ls(self, folder: str) -> frozenset[str] | None:
        try:
            entries = self.fs.ls(folder, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        finally:
            self.fs.invalidate_cache(folder)  # object stores keep each listing's entries (dicts) for good otherwise
        return frozenset(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)
