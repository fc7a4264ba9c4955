"""Records (plan.json, manifest.json, shard reports, staging records, spill markers, meta.json, an index's
metadata, metrics.json) are written whole or not at all, and read back with an error that names them.

On a local (POSIX) file system a record is written to a temporary name in the same folder, fsynced, then renamed
over the old one (`os.replace`, atomic), and the folder is fsynced: a writer killed at any point leaves the old
record or none, never a truncated one. On an object store (s3fs, gcsfs, memory) it is one PUT (`pipe_file`),
which the store applies whole. `read_json` turns a record that is unreadable anyway (a truncated file left by an
older version, a damaged disk) into a `RecordError` naming the file and what it is, so a job can redo what the
record described instead of dying in `json.loads`.
"""

from __future__ import annotations

import json
import os
import secrets
from contextlib import suppress
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

TEMP_SUFFIX = ".tmp"  # temporary names: `.<name>.<pid>-<random>.tmp`, in the record's folder


class RecordError(ValueError):
    """A record exists but is not readable JSON of the expected shape (truncated or damaged)."""

    def __init__(self, path: str, what: str, reason: str) -> None:
        super().__init__(f"{path}: the {what} is unreadable ({reason}); it was cut short or damaged")
        self.path = path
        self.what = what


def is_local(fs: AbstractFileSystem | None) -> bool:
    return fs is None or isinstance(fs, LocalFileSystem)


def is_temp_name(name: str) -> bool:
    """A temporary name `write_bytes_atomic` uses (left behind only by a writer killed before its rename)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def temp_name(path: str) -> str:
    """A temporary name beside `path`, unique to this writer (`is_temp_name`)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")


def write_bytes_atomic(fs: AbstractFileSystem | None, path: str, data: bytes) -> None:
    """Write `data` to `path` whole: temporary name, fsync, rename (local; `fs=None` means local), or one PUT."""
    if not is_local(fs):
        assert fs is not None
        fs.pipe_file(path, data)
        return
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_folder(folder)


def fsync_folder(folder: str) -> None:
    """Make a rename in `folder` durable (best effort: some file systems cannot fsync a folder)."""
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(fs: AbstractFileSystem | None, path: str, obj: Any, **dumps: Any) -> None:
    """`obj` as JSON (`json.dumps` keyword arguments pass through), written whole (`write_bytes_atomic`)."""
    write_bytes_atomic(fs, path, json.dumps(obj, **dumps).encode())


def read_json(fs: AbstractFileSystem | None, path: str, what: str) -> dict[str, Any]:
    """The JSON object in `path` (`fs=None`: local). A missing file raises `FileNotFoundError` as usual; one that
    is not a whole JSON object raises `RecordError` naming `path` and `what` it is (e.g. "shard report")."""
    if fs is None:
        with open(path, "rb") as f:
            raw = f.read()
    else:
        raw = fs.cat_file(path)
    if not raw.strip():
        raise RecordError(path, what, "empty")
    try:
        doc = json.loads(raw)
    except UnicodeDecodeError as e:
        raise RecordError(path, what, f"not UTF-8 text at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise RecordError(path, what, f"not JSON at byte {e.pos} of {len(raw)}: {e.msg}") from None
    if not isinstance(doc, dict):
        raise RecordError(path, what, f"a JSON {type(doc).__name__}, expected an object")
    return doc
