"""Stage the published downloads into shard-keyed buckets, so shard tasks can join S1 and S2 with bounded memory.

The S2 download lists pairs by S2 product and the S1 download by S1 scene: no single pass can pair them. Each
download is decompressed once, from its start (one zstd frame or gzip stream, no seek table), by one task that
hashes the compressed bytes (md5) in the same pass. Every member is routed to the planned shard of its pair and
buffered; when the buffer holds `SPILL_BYTES`, it is written as one *spill*, so memory never grows with the
archive. A spill is one segment per shard present, each segment `<u64 index length><index JSON: [[member, size],
...]><the members' bytes>`; its marker says where each shard's segment lies. A shard task reads, from every spill
that lists its shard, just that byte range (one ranged read), and has every file of its pairs at hand.

A download's record (`<staging>/<download>.json`, written last) says it is staged, with its md5, byte count, what
it skipped and why, and the spills. A spill is skipped on a re-run when its marker exists, so a killed staging is
decompressed again from the start (the stream cannot be entered in the middle) but writes nothing twice; a staged
download is never read again. Spills are deleted once the ingest's manifest is written.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from bigearth.archive.layouts import ArchiveLayout, Download
from bigearth.archive.layouts.downloads import split_locator
from bigearth.archive.reader import MissingMember
from bigearth.archive.tarstream import open_download
from bigearth.core.records import RecordError, read_json, write_json_atomic
from bigearth.core.storage import StorageOptions, arrow_filesystem, join, open_fs

log = logging.getLogger(__name__)

SPILL_BYTES = 64 << 20  # member bytes buffered per download before they are written as one spill
EXAMPLES = 20  # names kept per kind of skipped member


def record_path(staging_root: str, download: str) -> str:
    return join(staging_root, f"{download}.json")


def _key(member: str) -> str | None:
    """The patch folder a member belongs to: `<top>/.../<patch>/<patch>_<suffix>` -> `<patch>`."""
    parts = member.split("/")
    if len(parts) < 3 or not parts[-1].startswith(parts[-2] + "_"):
        return None
    return parts[-2]


class NameIndex:
    """name -> int for many names in 12 bytes each (sorted 64-bit hashes + values), not a dict of strings."""

    def __init__(self, names: Sequence[str], values: Sequence[int] | None = None) -> None:
        hashes = np.fromiter((_hash(n) for n in names), dtype=np.uint64, count=len(names))
        order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[order]
        vals = np.zeros(len(names), np.int32) if values is None else np.asarray(values, np.int32)
        self._values = vals[order]

    def get(self, name: str) -> int | None:
        h = np.uint64(_hash(name))
        i = int(np.searchsorted(self._hashes, h))
        if i < len(self._hashes) and self._hashes[i] == h:
            return int(self._values[i])
        return None

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None


def _hash(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def stage_download(
    download: dict[str, Any],
    archive: str,
    staging: str,
    storage: StorageOptions,
    shard_of: pa.Table,
    known: pa.Array,
    progress: bool = True,
) -> dict[str, Any]:
    """Decompress one download and write its members into spills; return (and write) its record.

    `shard_of`: (name, shard) for every pair of the shards still to write, name = the patch folder's name in this
    download (S2 patch id, or S1 name); `known`: every name of that kind the metadata describes.
    """
    d = Download(**download)
    fs, root = open_fs(staging, storage)
    rec_path = record_path(root, d.name)
    done = _read_record(fs, rec_path, "staging record", "the download is staged again")
    if done is not None:
        return done
    fs.makedirs(join(root, d.name), exist_ok=True)
    route = NameIndex(shard_of.column("name").to_pylist(), shard_of.column("shard").to_pylist())
    known_set = NameIndex(known.to_pylist())
    afs, aroot = arrow_filesystem(archive, storage)
    path = join(aroot, d.name)
    size = afs.get_file_info(path).size
    bar = _bar(d.name, size, progress)
    counts = {"members": 0, "staged": 0, "not_selected": 0, "unknown": 0, "unexpected": 0}
    last_key, last_shard = None, None  # the members of a patch are adjacent: look each patch up once
    buckets: dict[int, int] = {}  # shard -> patches of it this download holds (what the ingest packs shards by)
    examples: dict[str, list[str]] = {"unknown": [], "unexpected": []}
    spills: list[dict[str, Any]] = []
    buffer, spare = SpillBuffer(SPILL_BYTES), SpillBuffer(SPILL_BYTES)  # one filled while the other is written
    writer = ThreadPoolExecutor(1)
    pending: Any = None
    started = time.perf_counter()
    shown = 0
    with afs.open_input_stream(path, compression=None) as f:  # pyarrow would un-zstd a .zst itself
        stream, reader = open_download(f, d.compression)  # type: ignore[arg-type]
        try:
            for m in stream:
                counts["members"] += 1
                if counts["members"] % 256 == 0 and bar is not None:
                    bar.update(reader.bytes - shown)
                    shown = reader.bytes
                key = _key(m.name) if m.name.startswith(d.top + "/") else None
                if key is None:
                    _skip(counts, examples, "unexpected", m.name)
                    continue
                if key != last_key:
                    last_key, last_shard = key, route.get(key)
                    if last_shard is not None:
                        buckets[last_shard] = buckets.get(last_shard, 0) + 1
                shard = last_shard
                if shard is None:
                    _skip(counts, examples, "not_selected" if key in known_set else "unknown", m.name)
                    continue
                if not buffer.fits(len(m.data)):
                    if pending is not None:
                        spills.append(pending.result())
                    pending = writer.submit(_spill, fs, root, d.name, len(spills), buffer)
                    buffer, spare = spare, buffer
                    buffer.clear()
                buffer.add(shard, m.name, m.data)
                counts["staged"] += 1
            if pending is not None:
                spills.append(pending.result())
                pending = None
            if buffer.entries:
                spills.append(_spill(fs, root, d.name, len(spills), buffer))
            reader.drain()  # the md5 covers the bytes after the tar's end too
        finally:
            reader.close()
            if pending is not None:
                pending.result()
            writer.shutdown()
    if bar is not None:
        bar.update(reader.bytes - shown)
        bar.close()
    if reader.error is not None or (size is not None and reader.bytes < size and not stream.error):
        # storage stopped answering (not a damaged file): no record, so a re-run reads the download again
        why = f"{type(reader.error).__name__}: {reader.error}" if reader.error else "the read ended early"
        raise OSError(
            f"{join(archive, d.name)}: reading stopped after {reader.bytes:,}"
            f"{'' if size is None else f' of {size:,}'} bytes ({why}); "
            "nothing was recorded for this download: re-run the ingest to read it again"
        )
    error = stream.error
    if error is None and not stream.ended_cleanly:
        error = "the tar stream has no end-of-archive marker (truncated download)"
    md5 = reader.md5.hexdigest()
    record = {
        "download": d.name,
        "bytes": reader.bytes,
        "size": size,
        "md5": md5,
        "published_md5": d.md5,
        "md5_matches": md5 == d.md5,
        "seconds": round(time.perf_counter() - started, 3),
        "error": error,
        "damage": stream.damage,
        "counts": counts,
        "examples": {k: v for k, v in examples.items() if v},
        "spills": spills,
        "kind": d.kind,
        "buckets": {str(k): n for k, n in sorted(buckets.items())},
    }
    write_json_atomic(fs, rec_path, record)  # written whole: the download is staged once this exists
    return record


def _read_record(fs: Any, path: str, what: str, then: str) -> dict[str, Any] | None:
    """A staging record or spill marker, or None: absent, or unreadable (cut short by an older writer killed
    mid-write: deleted, with a warning, and what it stood for is done again)."""
    try:
        return read_json(fs, path, what)
    except FileNotFoundError:
        return None
    except RecordError as e:
        log.warning("%s: %s", e, then)
        fs.rm_file(path)
        return None


def _skip(counts: dict[str, int], examples: dict[str, list[str]], kind: str, name: str) -> None:
    counts[kind] += 1
    if kind in examples and len(examples[kind]) < EXAMPLES:
        examples[kind].append(name)


class SpillBuffer:
    """Members copied into one preallocated buffer (no per-member objects kept: memory is exactly bounded)."""

    def __init__(self, capacity: int) -> None:
        self.data = bytearray(capacity)
        self.used = 0
        self.entries: list[tuple[int, str, int, int]] = []  # shard, member, offset, size

    def fits(self, n: int) -> bool:
        return self.used + n <= len(self.data) or not self.entries

    def add(self, shard: int, name: str, data: bytes) -> None:
        end = self.used + len(data)
        if end > len(self.data):  # a member larger than the whole buffer: grow for it alone
            self.data.extend(bytes(end - len(self.data)))
        self.data[self.used : end] = data
        self.entries.append((shard, name, self.used, len(data)))
        self.used = end

    def clear(self) -> None:
        self.used = 0
        self.entries = []


def _spill(fs: Any, root: str, download: str, k: int, buffer: SpillBuffer) -> dict[str, Any]:
    """Write one spill (one segment per shard) unless a previous run wrote it; return its index entry."""
    rel = join(download, f"spill-{k:05d}.bin")
    marker = join(root, download, f"spill-{k:05d}.json")
    done = _read_record(fs, marker, "spill marker", "the spill is written again")
    if done is not None:
        return done
    order = sorted(buffer.entries, key=lambda e: (e[0], e[1]))
    groups: dict[str, list[int]] = {}
    offset = 0
    with fs.open(join(root, rel), "wb") as f, memoryview(buffer.data) as view:
        for shard, entries in itertools.groupby(order, key=lambda e: e[0]):
            chunk = list(entries)
            index = json.dumps([[name, n] for _, name, _, n in chunk]).encode()
            f.write(struct.pack("<Q", len(index)))
            f.write(index)
            size = 8 + len(index)
            for _, _, start, n in chunk:
                f.write(view[start : start + n])
                size += n
            groups[str(shard)] = [offset, size]
            offset += size
    entry = {"path": rel, "groups": groups, "members": len(order)}
    write_json_atomic(fs, marker, entry)  # the spill is done once its marker exists: written whole
    return entry


def read_segment(data: bytes) -> Iterator[tuple[str, memoryview]]:
    """The (member, bytes) of one spill segment."""
    (n,) = struct.unpack_from("<Q", data, 0)
    view = memoryview(data)
    pos = 8 + n
    for name, size in json.loads(bytes(view[8:pos])):
        yield name, view[pos : pos + size]
        pos += size


def _bar(name: str, size: int, progress: bool) -> Any:
    if not progress:
        return None
    try:
        ray = sys.modules.get("ray")  # never imported here: an in-process run has no Ray
        if ray is not None and ray.is_initialized():  # in a Ray task: the driver draws the bar, one line a download
            from ray.experimental.tqdm_ray import tqdm as ray_tqdm

            return ray_tqdm(desc=f"decompress {name}", total=size, unit="B")
    except Exception:  # progress is best effort
        pass
    from tqdm import tqdm

    return tqdm(desc=f"decompress {name}", total=size, unit="B", unit_scale=True)


def shard_entries(records: Sequence[dict[str, Any]], shard: int) -> list[list[Any]]:
    """(download, spill path, [offset, size]) of every spill holding members of `shard`."""
    out = []
    for r in records:
        for s in r.get("spills", []):
            g = s["groups"].get(str(shard))
            if g is not None:
                out.append([r["download"], s["path"], g])
    return out


def download_problems(records: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Download name -> why some of its members may be missing (absent file, truncated or corrupt stream)."""
    out = {}
    for r in records:
        if r.get("missing"):
            out[r["download"]] = f"the download {r['download']} is not in the archive folder"
        elif r.get("error"):
            out[r["download"]] = f"{r['download']} could not be read to the end: {r['error']}"
        elif r.get("damage"):
            out[r["download"]] = f"{r['download']} is damaged: {'; '.join(r['damage'][:3])}"
    return out


class StagedSource:
    """The files of one shard's pairs, read from the spills: locator (`<download>:<member>`) -> bytes."""

    def __init__(
        self, staging: str, storage: StorageOptions, entries: Sequence[Sequence[Any]], problems: dict[str, str]
    ) -> None:
        fs, root = open_fs(staging, storage)
        self.problems = problems
        self.blobs: dict[str, Any] = {}

        def load(entry: Sequence[Any]) -> tuple[str, bytes]:
            download, rel, (offset, size) = entry
            segment = fs.cat_file(join(root, rel), start=offset, end=offset + size)  # one ranged read
            if len(segment) != size:
                raise OSError(f"{join(root, rel)}: staged segment cut short ({len(segment)} of {size} bytes)")
            return download, segment

        with ThreadPoolExecutor(8) as pool:  # concurrent ranged reads (object storage, or the page cache)
            for download, segment in pool.map(load, entries):
                for member, data in read_segment(segment):
                    self.blobs[f"{download}:{member}"] = data

    def fetch(self, layout: ArchiveLayout, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for row in rows:
            for loc in layout.files(row).values():
                data = self.blobs.get(loc)
                if data is None:
                    download, member = split_locator(loc)
                    problem = self.problems.get(download)
                    if problem and problem.startswith("the download "):  # the whole file is absent
                        out[loc] = MissingMember(problem)
                    else:
                        why = f"{download} has no member {member}"
                        out[loc] = MissingMember(f"{why}; {problem}" if problem else why)
                else:
                    out[loc] = data
        return out


def staged_download_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What the manifest keeps of each download: md5 (with the published one), bytes, counts, damage."""
    keep = (
        "bytes",
        "size",
        "md5",
        "published_md5",
        "expected_md5",
        "md5_source",
        "md5_matches",
        "seconds",
        "error",
        "damage",
        "counts",
        "examples",
        "missing",
    )
    return {r["download"]: {k: r[k] for k in keep if k in r} for r in records}


def missing_record(download: Download) -> dict[str, Any]:
    """The record of a download that is not in the archive folder (its pairs are quarantined, naming it)."""
    return {
        "download": download.name,
        "missing": True,
        "published_md5": download.md5,
        "spills": [],
        "kind": download.kind,
        "buckets": {},
    }
