"""Read the members of a compressed tar download as one forward stream: md5, decompression and tar parsing in
one pass, without extracting anything and without seeking.

`TarStream(chunks, compression)` yields `Member(name, data, offset)` for every regular file and records what it
met on the way (`damage`: tar headers that failed their checksum and were skipped up to the next valid header;
malformed pax records, GNU long names and sparse members, each skipped with the member it describes; members,
long names and pax headers larger than their caps, never held: the reader resyncs on the next valid header;
`error`: the compressed stream ended early or is corrupt, or `MAX_RESYNC` bytes passed without a valid header,
after which nothing more is read, as a single zstd frame or gzip stream cannot be resumed in the middle).
Nothing read is trusted: every length is bounded before anything is buffered, decompression hands out at most
`OUTPUT_PIECE` bytes per call whatever the ratio (a bomb costs time, never memory), concatenated frames are read in
place (a long run of empty frames is the stream's error), no input makes the reader
loop without consuming bytes, and the damage kept is bounded (`MAX_DAMAGE_NOTES`, the rest counted). Handles GNU
long names (`L`), pax headers (`x`, `g`), ustar prefixes and directory entries, which are skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

BLOCK = 512
_ZERO = bytes(BLOCK)
READ_CHUNK = 8 << 20  # compressed bytes per read from storage (at most QUEUED + 2 chunks in memory)
QUEUED = 3
DECOMPRESS_PIECE = 1 << 20  # compressed bytes per decompress call
FEED_MIN = 1 << 10  # compressed bytes of the first call into a new frame (doubling up to DECOMPRESS_PIECE)
MAX_EMPTY_FRAMES = 1024  # frames in a row that decompress to nothing: more is damage (no writer makes them)
OUTPUT_PIECE = 2 << 20  # at most this many uncompressed bytes per decompress call, whatever the ratio
MAX_MEMBER = 64 << 20  # no archive file comes near this (a band is < 1 MB): a larger member is damage, skipped
MAX_NAME = 64 << 10  # a GNU long name (or link name) larger than this is damage
MAX_PAX = 1 << 20  # a pax extended header larger than this is damage
MAX_SIZE_FIELD = 8 << 30  # what a ustar size field can hold: a larger (base-256 or pax) size is damage
MAX_DAMAGE_NOTES = 200  # damage messages kept per download (the rest counted)
MAX_RESYNC = 256 << 20  # this many tar bytes without a valid header: the rest of the download is quarantined


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes
    offset: int  # of its header in the uncompressed tar


class _Counting:
    """Reads `f` in chunks on a thread, hashing every byte read (and decompressing it there if asked), so storage
    and md5 overlap with the consumer's work."""

    def __init__(self, f: BinaryIO, compression: str = "none", chunk: int | None = None, on_bytes: Any = None) -> None:
        self.md5 = hashlib.md5()
        self.bytes = 0
        self.error: BaseException | None = None
        self.compression = compression
        self.state: dict[str, Any] = {}
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUED)
        self._on_bytes = on_bytes
        self._stop = False
        self._finished = False
        self._t = threading.Thread(target=self._run, args=(f, chunk or READ_CHUNK), daemon=True)
        self._t.start()

    def _raw(self, f: BinaryIO, chunk: int) -> Iterator[bytes]:
        while not self._stop:
            data = f.read(chunk)
            if not data:
                return
            self.md5.update(data)
            self.bytes += len(data)
            yield data

    def _run(self, f: BinaryIO, chunk: int) -> None:
        try:
            for out in _decompressed(self._raw(f, chunk), self.compression, self.state):
                self._q.put(out)
        except BaseException as e:  # a storage error ends the stream; the reader reports it
            self.error = e
        finally:
            self._q.put(None)

    def __iter__(self) -> Iterator[bytes]:
        while not self._finished:
            data = self._q.get()
            if data is None:
                self._finished = True  # the end was handed out once: a later iteration (drain) ends at once
                return
            if self._on_bytes is not None:
                self._on_bytes(len(data))
            yield data

    def drain(self) -> None:
        """Read (and hash) the rest of the file: the md5 covers every byte even when the tar ended before it."""
        for _ in self:
            pass

    def close(self, timeout: float = 30.0) -> None:
        """Stop the reader thread; a read stalled in the storage client is left behind (a daemon) after `timeout`."""
        self._stop = True
        deadline = time.monotonic() + timeout
        while self._t.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                self._q.get(timeout=0.1)


def _zstd() -> Any:
    """The zstd decompressor with a bounded output per call: the standard library's from 3.14, its backport before."""
    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        from backports import zstd  # type: ignore[no-redef]
    return zstd


class _Inflater:
    """One zstd frame or gzip member, decompressed at most `OUTPUT_PIECE` bytes per call (a small frame that expands
    a thousand-fold is handed out piece by piece, never inflated whole)."""

    def __init__(self, compression: str) -> None:
        self.gzip = compression == "gzip"
        self.d: Any = zlib.decompressobj(wbits=31) if self.gzip else _zstd().ZstdDecompressor()

    @property
    def eof(self) -> bool:
        return bool(self.d.eof)

    @property
    def unused_data(self) -> bytes:
        return bytes(self.d.unused_data)

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The output of `data`, in pieces of at most OUTPUT_PIECE bytes."""
        if self.gzip:
            while True:
                out = self.d.decompress(data, OUTPUT_PIECE)
                data = self.d.unconsumed_tail
                if out:
                    yield out
                if self.d.eof or (not data and len(out) < OUTPUT_PIECE):
                    return
        out = self.d.decompress(data, OUTPUT_PIECE)
        while True:
            if out:
                yield out
            if self.d.eof or self.d.needs_input:
                return
            out = self.d.decompress(b"", OUTPUT_PIECE)


def _errors(compression: str) -> tuple[type[BaseException], ...]:
    return (zlib.error,) if compression == "gzip" else (_zstd().ZstdError,)


def _decompressed(chunks: Iterator[bytes], compression: str, state: dict[str, Any]) -> Iterator[bytes]:
    """Uncompressed bytes of a zstd frame or gzip stream (pieces of at most OUTPUT_PIECE bytes); sets
    state['error'] if it ends early or is corrupt.

    Concatenated frames / members are read in place: each decompressor is fed slices of the chunk (`FEED_MIN`
    bytes after a frame starts, doubling up to DECOMPRESS_PIECE while the frame goes on), so what follows a frame's
    end is copied at most once per slice, never the whole rest of the chunk per frame (no quadratic copying on many
    tiny frames). More than `MAX_EMPTY_FRAMES` frames in a row that decompress to nothing is damage: the rest of
    the download is quarantined. `state['fed']` counts the compressed bytes handed to decompressors."""
    if compression == "none":
        yield from chunks
        return
    if compression not in ("zstd", "gzip"):
        raise ValueError(f"unknown compression {compression!r}")
    errors = _errors(compression)
    compressed = 0  # compressed bytes consumed
    state.setdefault("fed", 0)
    d = _Inflater(compression)
    step = FEED_MIN
    produced = False  # the current frame handed out something
    empty = 0  # frames in a row that decompressed to nothing
    done = False  # the last frame/member ended and only zero padding followed
    for big in chunks:
        view = memoryview(big)
        pos = 0
        while pos < len(view):
            try:
                if d.eof:  # another gzip member or zstd frame, or the zero padding some tools add
                    padding = bytes(view[pos : pos + FEED_MIN])
                    if not padding.strip(b"\0"):
                        done = True
                        pos += len(padding)
                        compressed += len(padding)
                        continue
                    empty = 0 if produced else empty + 1
                    if empty > MAX_EMPTY_FRAMES:
                        state["error"] = (
                            f"more than {MAX_EMPTY_FRAMES:,} {compression} frames in a row decompress to nothing, "
                            f"near compressed byte {compressed:,}: the stream is damaged"
                        )
                        return
                    d, step, produced = _Inflater(compression), FEED_MIN, False
                done = False
                piece = bytes(view[pos : pos + step])
                state["fed"] += len(piece)
                for out in d.feed(piece):
                    produced = True
                    yield out
                used = len(piece) - len(d.unused_data) if d.eof else len(piece)
                pos += used
                compressed += used
                if not d.eof:
                    step = min(step * 2, DECOMPRESS_PIECE)
            except errors as e:
                state["error"] = f"the {compression} stream is corrupt near compressed byte {compressed:,} ({e})"
                return
    if not (d.eof or done):
        state["error"] = f"the {compression} stream ends early, after {compressed:,} bytes (truncated download)"


def _octal(field_: bytes | bytearray) -> int:
    if field_ and field_[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field_[1:], "big")
    text = field_.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _valid_header(h: bytes | bytearray) -> bool:
    field_ = h[148:156]
    try:
        stored = int(field_.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return False
    return stored == sum(h) - sum(field_) + 8 * 32  # the checksum field counts as spaces


class PaxError(ValueError):
    """A pax extended header that does not follow `<length> <key>=<value>\\n` records."""


def _pax(data: bytes) -> dict[str, str]:
    """The records of a pax extended header. Every record must be `<decimal length> <key>=<value>\\n`, its length
    counting the whole record and ending inside `data`; NUL padding may follow the last. Anything else raises
    PaxError (pax data is not covered by the header checksum: one bad digit must not stop the reader)."""
    out: dict[str, str] = {}
    pos, n = 0, len(data)
    while pos < n:
        if data[pos] == 0:
            if data.count(0, pos) == n - pos:  # NUL padding after the last record
                break
            raise PaxError(f"a NUL byte inside the records at byte {pos}")
        sp = data.find(b" ", pos, pos + 21)  # a length of at most 20 digits
        digits = data[pos:sp] if sp >= 0 else b""
        if not digits or not digits.isdigit():
            raise PaxError(f"the record at byte {pos} has no decimal length ({data[pos : pos + 20]!r})")
        length = int(digits)
        if length < len(digits) + 4:  # the digits, a space, at least `k=` and the newline
            raise PaxError(f"the record at byte {pos} states a length of {length}, shorter than the record itself")
        end = pos + length
        if end > n:
            raise PaxError(f"the record at byte {pos} states a length of {length}, past the header's {n} bytes")
        if data[end - 1] != 0x0A:
            raise PaxError(f"the record at byte {pos} (length {length}) does not end with a newline")
        key, eq, value = data[sp + 1 : end - 1].partition(b"=")
        if not eq or not key:
            raise PaxError(f"the record at byte {pos} is not key=value")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos = end
    size = out.get("size")
    if size is not None and not (size.isascii() and size.isdigit()):
        raise PaxError(f"its size {size[:40]!r} is not a decimal number")
    return out


_META = {b"L": "GNU long name", b"K": "GNU long link name", b"x": "pax header", b"X": "pax header", b"g": "pax header"}


@dataclass
class TarStream:
    """The regular-file members of a tar stream given as uncompressed-or-compressed chunks."""

    chunks: Any  # an iterable of compressed byte chunks
    compression: str
    damage: list[str] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    ended_cleanly: bool = False  # an end-of-archive marker was read
    at: int = 0  # the tar offset of the header being read
    unnoted: int = 0  # damage past MAX_DAMAGE_NOTES, counted only

    @property
    def error(self) -> str | None:
        return self.state.get("error")

    def __iter__(self) -> Iterator[Member]:
        try:
            yield from self._members()
            if self.unnoted:
                self.damage.append(f"... and {self.unnoted:,} more pieces of damage like these")
        except Exception as e:  # a fault of the parser itself must not kill the staging task: the rest is lost
            self.state.setdefault(
                "error",
                f"the tar stream could not be parsed past tar byte {self.at:,} ({type(e).__name__}: {e}): "
                "the rest of the download is quarantined",
            )

    def _members(self) -> Iterator[Member]:
        buf = bytearray()  # the current window of the uncompressed tar
        pos = 0  # position in buf
        base = 0  # tar offset of buf[0]
        source = _decompressed(iter(self.chunks), self.compression, self.state)
        exhausted = False
        long_name: str | None = None
        pax: dict[str, str] = {}
        drop: str | None = None  # why the next member cannot be trusted (its pax or long name was damaged)
        skipping_from: int | None = None
        skip_why = ""

        def fill(n: int) -> bool:
            """At least n unread bytes in buf (False at the end of the stream). Appends in place (no copy of what
            is buffered) and drops what was read only once it is most of the buffer: linear in the bytes read."""
            nonlocal pos, base, exhausted
            while len(buf) - pos < n and not exhausted:
                try:
                    more = next(source)
                except StopIteration:
                    exhausted = True
                    break
                if pos and pos >= len(buf) // 2:
                    del buf[:pos]
                    base += pos
                    pos = 0
                buf.extend(more)
            return len(buf) - pos >= n

        def discard(n: int) -> bool:
            """Skip n bytes without holding them (False if the stream ends first)."""
            nonlocal pos
            while n > 0:
                if len(buf) == pos and not fill(1):
                    return False
                step = min(n, len(buf) - pos)
                pos += step
                n -= step
            return True

        def resync(why: str) -> None:
            nonlocal skipping_from, skip_why, long_name, pax, drop
            if skipping_from is None:
                skipping_from, skip_why = base + pos, why
                long_name, pax, drop = None, {}, None  # they named the damaged member, not the next one

        def end_resync(tail: str = "the member(s) there were skipped") -> None:
            nonlocal skipping_from
            if skipping_from is not None:
                self._note(f"tar bytes {skipping_from:,}-{base + pos:,} hold no valid header ({skip_why}): {tail}")
                skipping_from = None

        while len(buf) - pos >= BLOCK or fill(BLOCK):
            self.at = base + pos
            if skipping_from is not None and base + pos - skipping_from > MAX_RESYNC:
                self.state.setdefault(
                    "error",
                    f"tar bytes {skipping_from:,}-{base + pos:,} hold no valid header ({skip_why}): more than "
                    f"{MAX_RESYNC >> 20} MiB without one, the rest of the download is quarantined",
                )
                return
            header = buf[pos : pos + BLOCK]  # a bytearray copy of one block
            if header == _ZERO:
                if skipping_from is None:
                    self.ended_cleanly = True
                    return
                if (len(buf) - pos >= 2 * BLOCK or fill(2 * BLOCK)) and buf[pos + BLOCK : pos + 2 * BLOCK] == _ZERO:
                    end_resync()
                    self.ended_cleanly = True  # the end-of-archive marker, after the damage
                    return
                pos += BLOCK  # zeros inside damage: keep looking for the next header
                continue
            if not _valid_header(header):
                resync("checksum mismatch")
                pos += BLOCK
                continue
            end_resync()
            offset = base + pos
            kind = bytes(header[156:157])
            try:
                size = int(pax["size"]) if "size" in pax and kind not in _META else _octal(header[124:136])
            except ValueError:
                size = -1
            if not 0 <= size < MAX_SIZE_FIELD:  # a garbage size field: treat the header as damaged
                resync(f"a header at tar byte {offset:,} states an impossible size")
                pos += BLOCK
                continue
            name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            if header[257:263] == b"ustar\x00":  # POSIX ustar: a prefix field
                prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
                if prefix:
                    name = f"{prefix}/{name}"
            why: str | None = None
            if kind in _META:
                cap = MAX_PAX if kind in (b"x", b"X", b"g") else MAX_NAME
                if size > cap:  # a wrong or hostile size field: nothing is buffered, the reader resyncs
                    resync(f"the {_META[kind]} at tar byte {offset:,} states {size:,} bytes, more than {cap:,}")
                    if kind != b"g":  # the member it describes is dropped when its header comes
                        drop = f"its {_META[kind]} at tar byte {offset:,} is damaged"
                    pos += BLOCK
                    continue
            else:
                if pax.get("path"):
                    name = pax["path"]
                elif long_name is not None:
                    name = long_name
                if size > MAX_MEMBER:  # a wrong size field, or a bomb: nothing is buffered, the reader resyncs
                    resync(
                        f"the member {name} at tar byte {offset:,} states {size:,} bytes, more than the "
                        f"{MAX_MEMBER >> 20} MiB any archive file has"
                    )
                    pos += BLOCK
                    continue
                sparse = kind == b"S" or (bool(pax) and any(k.startswith("GNU.sparse.") for k in pax))
                why, long_name, pax, drop = drop, None, {}, None
                if why is None and sparse:
                    why = "a sparse file (no archive file is one)"
                if why is not None and kind in (b"0", b"\0", b"7", b"S"):
                    self._note(f"the member {name} at tar byte {offset:,} is skipped: {why}")
            pos += BLOCK
            if kind == b"S" and header[482]:  # old GNU sparse: extension headers follow, outside `size`
                extended = True
                while extended:
                    if not fill(BLOCK):
                        return
                    extended = bool(buf[pos + 504])
                    pos += BLOCK
                    if base + pos - offset > MAX_RESYNC:
                        resync(f"the sparse member at tar byte {offset:,} has endless extension headers")
                        break
                if skipping_from is not None:
                    continue
            padded = -(-size // BLOCK) * BLOCK
            if why is not None:  # a member not to trust, but its header is sound: step over its data exactly
                if not discard(padded):
                    return
                continue
            if len(buf) - pos < padded and not fill(padded):
                # the stream ended inside this member: it is lost (the caller reports the missing files)
                return
            data = _take(buf, pos, size)
            pos += padded
            if kind == b"L":
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
                if not long_name:
                    long_name = None
                    self._meta_damage(kind, offset, "it is empty")
                    drop = f"its GNU long name at tar byte {offset:,} is empty"
                continue
            if kind in (b"x", b"X", b"g"):
                try:
                    parsed = _pax(data)
                except PaxError as e:
                    self._meta_damage(kind, offset, str(e))
                    if kind != b"g":  # a global header names no member
                        drop = f"its pax header at tar byte {offset:,} is malformed"
                    continue
                if kind != b"g":
                    pax = parsed
                continue
            if kind == b"K":
                continue
            if kind in (b"0", b"\0", b"7"):
                yield Member(name, data, offset)
            # directories, links, devices: not archive files, skipped
        end_resync("the member(s) there were lost")

    def _note(self, damage: str) -> None:
        """Record one piece of damage; past MAX_DAMAGE_NOTES only count them (a hostile download cannot grow the
        record without bound)."""
        if len(self.damage) < MAX_DAMAGE_NOTES:
            self.damage.append(damage)
        else:
            self.unnoted += 1

    def _meta_damage(self, kind: bytes, offset: int, why: str) -> None:
        self._note(f"the {_META[kind]} at tar byte {offset:,} is malformed ({why})")


def _take(buf: bytearray, start: int, n: int) -> bytes:
    """buf[start:start + n] as bytes, copied once (a bytearray slice would copy twice)."""
    with memoryview(buf) as view:
        return bytes(view[start : start + n])


def open_download(f: BinaryIO, compression: str, on_bytes: Any = None) -> tuple[TarStream, _Counting]:
    """A TarStream over the file object `f`, and the reader that hashes its compressed bytes (`.md5`, `.bytes`)."""
    # The reader thread only reads and hashes (overlapping storage with the consumer); decompression runs in the
    # consuming thread, in TarStream (the decompressor is compression.zstd / backports.zstd or zlib).
    reader = _Counting(f, on_bytes=on_bytes)
    return TarStream(reader, compression, state=reader.state), reader
