"""One writer per output: a lock record in the output folder (`<out>/.bigearth-lock.json`).

A job that writes an output (`bigearth ingest`'s shard set, `bigearth import-reben`'s checkpoint folder,
`bigearth index`'s embedded-engine collection) takes the lock first. A second writer is refused with an
`OutputLocked` naming the output and the holder (job, host, process id, start time, last heartbeat). The holder
refreshes the record's heartbeat every `HEARTBEAT_S` from a thread and deletes it at the end, on error too.

A lock is stale, and taken over with a log line, when its heartbeat is older than `STALE_AFTER_S` (the holder's
clock against ours: hosts' clocks must agree within minutes), or when it was taken on this host (same host name
and process-id namespace) by a process that is no longer running. `break_lock=True` (`--break-lock`) takes any
lock over at once. A job that is re-run by a supervisor after its driver was killed (a RayJob's `backoffLimit`, on a
new cluster) names itself in `BIGEARTH_LOCK_OWNER` (e.g. `rayjob/bigearth-ingest`): a lock with the same owner is
a previous attempt of this one, taken over at once. A holder whose lock was taken over notices at its next
heartbeat, and `check()` then refuses to commit; right before it commits a job calls `verify()`, which reads the
lock again (the ingest before its manifest, import-reben before `meta.json`, the index job before its switch).

Creation is exclusive. Local: the record is written whole to a temporary name and hard-linked to the lock's
name (`link` fails if the name exists; file systems without hard links: `O_CREAT | O_EXCL`). Object stores:
a conditional PUT (`If-None-Match: *`) where the store honours it (AWS S3, MinIO, SeaweedFS), else fsspec's
check-then-write; either way the record is read back and must carry our token. On a store without conditional
writes two writers starting within the same second can both proceed until the next heartbeat: best effort there.

Takeover and heartbeat act only on the lock they judged. Local: the lock file is renamed to a name of the writer's
own first (`rename` is atomic: of two writers taking a stale lock over, one gets it) and is removed or replaced
only if it carries the token judged; another writer's fresh lock grabbed in between is put back (by an exclusive
link). Object stores: read, compare, then delete or overwrite (best effort, as above).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import uuid
from contextlib import suppress
from typing import Any

from fsspec import AbstractFileSystem

from bigearth.core.records import RecordError, is_local, read_json, write_bytes_atomic, write_json_atomic
from bigearth.core.storage import StorageOptions, join, open_fs

log = logging.getLogger(__name__)

LOCK_FILE = ".bigearth-lock.json"
STALE_AFTER_S = 600.0  # a heartbeat older than this (10 min) is a dead writer's
HEARTBEAT_S = 60.0
OWNER_ENV = "BIGEARTH_LOCK_OWNER"  # who runs this job, the same for each attempt of it (one attempt at a time)
BREAK_LOCK_HELP = (
    "take over another writer's lock on the output now (only when it is known to have stopped: two writers "
    "would corrupt it); a lock whose heartbeat is 10 min old, or whose process is gone from this host, is taken "
    "over without it"
)


class OutputLocked(RuntimeError):
    """Another writer holds the output (or took it over from this one)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pid_namespace() -> str | None:
    with suppress(OSError):
        return os.readlink("/proc/self/ns/pid")
    return None


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused process id apart."""
    with suppress(OSError, IndexError), open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[19]
    return None


def _running(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it runs
        pass
    return start is None or _process_start(pid) in (None, start)


def describe(holder: dict[str, Any]) -> str:
    """`ingest on host-a (pid 123), started 2026-01-01T10:00:00Z, last heartbeat 20 s ago`."""
    job, host, pid = holder.get("job", "a writer"), holder.get("host", "?"), holder.get("pid", "?")
    text = f"{job} on {host} (pid {pid}), started {holder.get('started', '?')}"
    with suppress(Exception):
        age = (_now() - dt.datetime.fromisoformat(holder["heartbeat"])).total_seconds()
        text += f", last heartbeat {age:.0f} s ago"
    return text


class OutputLock:
    """The lock of one output; use as a context manager (`acquire` on enter, `release` on exit, also on error)."""

    def __init__(
        self,
        url: str,
        job: str,
        storage: StorageOptions | None = None,
        *,
        name: str = LOCK_FILE,
        break_lock: bool = False,
        stale_after_s: float = STALE_AFTER_S,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.url = url
        self.fs: AbstractFileSystem
        self.name = name
        self._open(url, storage)
        self.job = job
        self.break_lock = break_lock
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.token = uuid.uuid4().hex
        self.lost: dict[str, Any] | None = None  # the record of whoever took the lock over from us
        self._held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._record: dict[str, Any] = {}

    def _open(self, url: str, storage: StorageOptions | None) -> None:
        self.fs, self.root = open_fs(url, storage)
        self.path = join(self.root, self.name)
        self.where = join(url.rstrip("/"), self.name)  # what messages name

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _new_record(self) -> dict[str, Any]:
        now = _now().isoformat(timespec="seconds")
        return {
            "job": self.job,
            "output": self.url,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_namespace": _pid_namespace(),
            "process_start": _process_start(os.getpid()),
            "started": now,
            "heartbeat": now,
            "token": self.token,
            "owner": os.environ.get(OWNER_ENV) or None,
        }

    def acquire(self) -> None:
        """Take the lock, or raise `OutputLocked` naming the holder. A stale lock (or any, with `break_lock`) is
        taken over with a warning."""
        self._prepare()
        self._record = self._new_record()
        for _ in range(3):  # a lock released or taken over between our reads: look again
            if self._create():
                self._held = True
                self._start_heartbeat()
                return
            holder = self._read_holder()
            if holder is None:
                continue
            why = "--break-lock" if self.break_lock else self._stale(holder)
            if why is None:
                raise OutputLocked(
                    f"{self.url} is being written by {describe(holder)} (lock {self.where}). Wait for it to end; "
                    f"a lock whose heartbeat is older than {self.stale_after_s:.0f} s, or whose process is gone from "
                    "this host, is taken over by itself; --break-lock takes it over now (only when no other writer "
                    "runs)"
                )
            log.warning("%s: taking over the lock of %s (%s)", self.url, describe(holder), why)
            print(f"{self.job}: taking over the lock on {self.url} from {describe(holder)} ({why})")
            self._remove_if(holder.get("token"))
        raise OutputLocked(f"{self.url}: could not take the lock {self.where} (other writers keep taking it)")

    # ---- the storage primitives (a Qdrant collection's lock overrides them: bigearth.retrieval.qdrant.QdrantLock)
    def _prepare(self) -> None:
        self.fs.makedirs(self.root, exist_ok=True)

    def _create(self) -> bool:
        """Create the lock record exclusively; False when it exists."""
        data = _encode(self._record)
        if is_local(self.fs):
            tmp = f"{self.path}.{self.token}.tmp"
            write_bytes_atomic(None, tmp, data)
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            except OSError:  # no hard links on this file system
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                with suppress(FileNotFoundError):
                    os.unlink(tmp)
            return True
        try:
            self.fs.pipe_file(self.path, data, mode="create")
        except FileExistsError:
            return False
        except OSError:  # a failed precondition (412) that the client did not translate (SeaweedFS via s3fs)
            if self.fs.exists(self.path):
                return False
            raise
        with suppress(FileNotFoundError, RecordError):  # a store that ignored the condition: the last PUT won
            return read_json(self.fs, self.path, "output lock").get("token") == self.token
        return False

    def _read_holder(self) -> dict[str, Any] | None:
        """The lock's record; None when it is gone; an unreadable one is described by its age alone."""
        try:
            return read_json(self.fs, self.path, "output lock")
        except FileNotFoundError:
            return None
        except RecordError as e:
            info: dict[str, Any] = {"job": "an unknown writer", "unreadable": str(e)}
            with suppress(Exception):
                mtime = self.fs.modified(self.path)
                mtime = mtime if mtime.tzinfo else mtime.replace(tzinfo=dt.UTC)
                info["heartbeat"] = info["started"] = mtime.isoformat(timespec="seconds")
            return info

    def _stale(self, holder: dict[str, Any]) -> str | None:
        """Why the holder's lock is stale, or None while it holds it."""
        try:
            age = (_now() - dt.datetime.fromisoformat(holder["heartbeat"])).total_seconds()
        except (KeyError, TypeError, ValueError):
            age = None
        if age is not None and age > self.stale_after_s:
            return f"its last heartbeat is {age:.0f} s old, more than {self.stale_after_s:.0f} s"
        owner = os.environ.get(OWNER_ENV)
        if owner and holder.get("owner") == owner:
            return f"a previous attempt of {owner} ({OWNER_ENV})"
        same_host = holder.get("host") == socket.gethostname() and holder.get("pid_namespace") == _pid_namespace()
        pid = holder.get("pid")
        if same_host and isinstance(pid, int) and not _running(pid, holder.get("process_start")):
            return f"process {pid} is no longer running on this host"
        return None  # (an unreadable lock of unknown age: only --break-lock takes it)

    def _remove_if(self, token: str | None) -> None:
        """Delete the lock if it still carries `token`. Local: the lock file is first renamed to a name of our own
        (atomic: of two writers removing it, one gets it) and deleted only if it is the one judged; a fresh lock
        grabbed by mistake (another writer took over in between) is put back. Object stores: read, then delete
        (best effort, like their creation without conditional writes)."""
        if is_local(self.fs):
            grave = f"{self.path}.{self.token}.taken"
            try:
                os.rename(self.path, grave)
            except FileNotFoundError:
                return
            try:
                taken = read_json(None, grave, "output lock").get("token")
            except (FileNotFoundError, RecordError):
                taken = None
            try:
                if taken != token:  # not the lock judged: another writer's, put it back (unless one is there)
                    with suppress(FileExistsError):
                        os.link(grave, self.path)
            finally:
                with suppress(FileNotFoundError):
                    os.unlink(grave)
            return
        try:
            current = read_json(self.fs, self.path, "output lock").get("token")
        except FileNotFoundError:
            return
        except RecordError:
            current = None
        if current == token:
            with suppress(FileNotFoundError):
                self.fs.rm_file(self.path)

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lock-heartbeat {self.url}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.refresh()
            except OutputLocked as e:
                log.error("%s", e)
                return
            except Exception as e:  # a store hiccup: the next beat tries again
                log.warning("%s: could not refresh the lock's heartbeat (%s: %s)", self.url, type(e).__name__, e)

    def refresh(self) -> None:
        """Write a new heartbeat, unless another writer took the lock over (then `OutputLocked`). Local: the new
        record replaces ours only if the lock is still ours at that instant (ours renamed aside, the new one linked
        in exclusively): a writer that took it over in between is never overwritten."""
        self.check()
        self._record["heartbeat"] = _now().isoformat(timespec="seconds")
        if self.fs is not None and is_local(self.fs):
            self._refresh_local()
            return
        current = self._read_holder() or {}
        if current.get("token") != self.token:
            self.lost = current or {"job": "another writer (the lock was removed)"}
            self.check()
        self._write()

    def _write(self) -> None:
        """Overwrite the lock record with ours (object stores: after `refresh` read it as ours)."""
        write_json_atomic(self.fs, self.path, self._record)

    def _refresh_local(self) -> None:
        fresh = f"{self.path}.{self.token}.tmp"
        mine = f"{self.path}.{self.token}.old"
        write_bytes_atomic(None, fresh, _encode(self._record))
        try:
            try:
                os.rename(self.path, mine)
            except FileNotFoundError:
                self.lost = {"job": "another writer (the lock was removed)"}
                self.check()
            try:
                current = read_json(None, mine, "output lock")
            except (FileNotFoundError, RecordError):
                current = {}
            if current.get("token") != self.token:  # another writer's lock: put it back, we lost ours
                with suppress(FileExistsError):
                    os.link(mine, self.path)
                self.lost = current or {"job": "another writer (the lock was unreadable)"}
                self.check()
            try:
                os.link(fresh, self.path)
            except FileExistsError:  # a writer created one in the instant ours was aside
                self.lost = self._read_holder() or {"job": "another writer"}
                self.check()
            except OSError:  # no hard links on this file system: rename (the lock name is free now)
                os.rename(fresh, self.path)
        finally:
            for leftover in (fresh, mine):
                with suppress(FileNotFoundError):
                    os.unlink(leftover)

    def verify(self) -> None:
        """Raise `OutputLocked` unless the lock is ours at this moment (read again, heartbeat renewed): what a job
        calls right before it commits, so that a takeover since the last heartbeat is not missed."""
        self.refresh()

    def check(self) -> None:
        """Raise `OutputLocked` when another writer took the lock over from this one."""
        if self.lost is not None:
            raise OutputLocked(
                f"{self.url}: the lock was taken over by {describe(self.lost)} while this {self.job} ran; "
                "this one stops without committing"
            )

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours."""
        if not self._held:
            return
        self._held = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self._remove_if(self.token)
        except Exception as e:  # never hide the job's own error behind the lock's
            log.warning("%s: could not remove the lock %s (%s: %s)", self.url, self.where, type(e).__name__, e)


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, indent=1).encode()
