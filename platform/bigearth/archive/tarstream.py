"""Read the members of a compressed tar download as one forward stream: md5, decompression and tar parsing in
one pass, without extracting anything and without seeking.

`TarStream(chunks, compression)` yields `Member(name, data, offset)` for every regular file and records what it
met on the way (`damage`: tar headers that failed their checksum and were skipped up to the next valid header;
`error`: the compressed stream ended early or is corrupt, after which nothing can be read, as a single zstd frame
or gzip stream cannot be resumed in the middle). Handles GNU long names (`L`), pax headers (`x`, `g`), ustar
prefixes and directory entries, which are skipped.
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
MAX_MEMBER = 1 << 30  # no archive file comes near this: a larger size field is damage


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


def _decompressed(chunks: Iterator[bytes], compression: str, state: dict[str, Any]) -> Iterator[bytes]:
    """Uncompressed bytes of a zstd frame or gzip stream; sets state['error'] if it ends early or is corrupt."""
    compressed = 0
    if compression == "zstd":
        import zstandard

        d: Any = zstandard.ZstdDecompressor().decompressobj()
        errors: tuple[type[BaseException], ...] = (zstandard.ZstdError,)
    elif compression == "gzip":
        d = zlib.decompressobj(wbits=31)
        errors = (zlib.error,)
    elif compression == "none":
        d = None
        errors = ()
    else:
        raise ValueError(f"unknown compression {compression!r}")
    done = False  # the last frame/member ended and only zero padding followed
    for big in chunks:
        if d is None:
            compressed += len(big)
            yield big
            continue
        view = memoryview(big)
        for i in range(0, len(view), DECOMPRESS_PIECE):  # small outputs: no large transient buffers
            chunk = bytes(view[i : i + DECOMPRESS_PIECE])
            compressed += len(chunk)
            out = b""
            try:
                while chunk:
                    if d.eof:  # another gzip member or zstd frame, or the zero padding some tools add
                        if not chunk.strip(b"\0"):
                            done = True
                            break
                        d = _decoder(compression)
                    done = False
                    out += d.decompress(chunk)
                    chunk = d.unused_data if d.eof else b""
            except errors as e:
                if out:
                    yield out
                state["error"] = f"the {compression} stream is corrupt near compressed byte {compressed:,} ({e})"
                return
            if out:
                yield out
    if d is not None and not (d.eof or done):
        state["error"] = f"the {compression} stream ends early, after {compressed:,} bytes (truncated download)"


def _decoder(compression: str) -> Any:
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj()
    return zlib.decompressobj(wbits=31)


def _octal(field_: bytes) -> int:
    if field_ and field_[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field_[1:], "big")
    text = field_.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _valid_header(h: bytes) -> bool:
    field_ = h[148:156]
    try:
        stored = int(field_.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return False
    return stored == sum(h) - sum(field_) + 8 * 32  # the checksum field counts as spaces


def _pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        try:
            length = int(data[pos:sp])
        except ValueError:
            break
        record = data[sp + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return out


@dataclass
class TarStream:
    """The regular-file members of a tar stream given as uncompressed-or-compressed chunks."""

    chunks: Any  # an iterable of compressed byte chunks
    compression: str
    damage: list[str] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    ended_cleanly: bool = False  # an end-of-archive marker was read

    @property
    def error(self) -> str | None:
        return self.state.get("error")

    def __iter__(self) -> Iterator[Member]:
        buf = b""  # the current window of the uncompressed tar
        pos = 0  # position in buf
        base = 0  # tar offset of buf[0]
        source = _decompressed(iter(self.chunks), self.compression, self.state)
        exhausted = False

        def fill(n: int) -> bool:
            nonlocal buf, pos, base, exhausted
            while len(buf) - pos < n and not exhausted:
                try:
                    more = next(source)
                except StopIteration:
                    exhausted = True
                    break
                buf = buf[pos:] + more  # copies the (small) unread tail once per decompressed chunk
                base += pos
                pos = 0
            return len(buf) - pos >= n

        long_name: str | None = None
        pax: dict[str, str] = {}
        skipping_from: int | None = None
        while len(buf) - pos >= BLOCK or fill(BLOCK):
            header = buf[pos : pos + BLOCK]
            if header == _ZERO:
                if skipping_from is None:
                    self.ended_cleanly = True
                    return
                if (len(buf) - pos >= 2 * BLOCK or fill(2 * BLOCK)) and buf[pos + BLOCK : pos + 2 * BLOCK] == _ZERO:
                    self.damage.append(
                        f"tar bytes {skipping_from:,}-{base + pos:,} hold no valid header (checksum mismatch): "
                        "the member(s) there were skipped"
                    )
                    self.ended_cleanly = True  # the end-of-archive marker, after the damage
                    return
                pos += BLOCK  # zeros inside damage: keep looking for the next header
                continue
            if not _valid_header(header):
                if skipping_from is None:
                    skipping_from = base + pos
                long_name, pax = None, {}  # they named the damaged member, not the next one
                pos += BLOCK
                continue
            if skipping_from is not None:
                self.damage.append(
                    f"tar bytes {skipping_from:,}-{base + pos:,} hold no valid header (checksum mismatch): "
                    "the member(s) there were skipped"
                )
                skipping_from = None
            offset = base + pos
            try:
                size = int(pax["size"]) if "size" in pax else _octal(header[124:136])
            except ValueError:
                size = -1
            if not 0 <= size <= MAX_MEMBER:  # a garbage size field: treat the header as damaged
                if skipping_from is None:
                    skipping_from = base + pos
                long_name, pax = None, {}
                pos += BLOCK
                continue
            kind = header[156:157]
            name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            if header[257:263] == b"ustar\x00":  # POSIX ustar: a prefix field
                prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
                if prefix:
                    name = f"{prefix}/{name}"
            padded = -(-size // BLOCK) * BLOCK
            if len(buf) - pos < BLOCK + padded and not fill(BLOCK + padded):
                # the stream ended inside this member: it is lost (the caller reports the missing files)
                return
            data = buf[pos + BLOCK : pos + BLOCK + size]
            pos += BLOCK + padded
            if kind == b"L":
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
                continue
            if kind in (b"x", b"X"):
                pax = _pax(data)
                continue
            if kind in (b"g", b"K"):
                continue
            if pax.get("path"):
                name = pax["path"]
            elif long_name is not None:
                name = long_name
            long_name, pax = None, {}
            if kind in (b"0", b"\0", b"7"):
                yield Member(name, data, offset)
            # directories, links, devices: not archive files, skipped
        if skipping_from is not None:
            self.damage.append(f"tar bytes {skipping_from:,}-{base + pos:,} hold no valid header (checksum mismatch)")


def open_download(f: BinaryIO, compression: str, on_bytes: Any = None) -> tuple[TarStream, _Counting]:
    """A TarStream over the file object `f`, and the reader that hashes its compressed bytes (`.md5`, `.bytes`)."""
    # Decompression stays in the consuming thread: python-zstandard holds the GIL while it decompresses
    # (measured: two threads no faster than one), so a thread would only add hand-offs.
    reader = _Counting(f, on_bytes=on_bytes)
    return TarStream(reader, compression, state=reader.state), reader
