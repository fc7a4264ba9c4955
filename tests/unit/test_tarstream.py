"""The tar stream reader on hostile downloads (bigearth.archive.tarstream), without Ray: whatever the bytes, reading
ends in bounded time and memory, and what was wrong is recorded as damage (or, past repair, as the stream's error)
while the members around it are still read. The fuzz runs are bounded and derandomised, each case under a time
limit (a hang fails the case instead of stalling the suite). The bombs, read in a subprocess under a memory limit:
tests/integration/test_tarstream.py."""

from __future__ import annotations

import contextlib
import gzip
import io
import signal
import tarfile
from collections.abc import Iterator
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bigearth.archive import tarstream
from bigearth.archive.tarstream import PaxError, TarStream, _pax

BOUNDED = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail (TimeoutError) if the block runs longer than `seconds`: the reader is pure Python, so the alarm lands."""

    def expired(*_: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _tar(members: list[tuple[str, int]], fmt: int = tarfile.GNU_FORMAT) -> tuple[bytes, list[int], int]:
    """A tar of `members` (name, size), the offsets of every header block it holds (long names and pax too) and
    the offset of its end-of-archive marker."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, size in members:
            info = tarfile.TarInfo(name)
            info.size = size
            t.addfile(info, io.BytesIO(bytes([len(name) % 251 + 1]) * size))
    raw = buf.getvalue()
    headers, pos = [], 0
    while pos + 512 <= len(raw) and raw[pos : pos + 512] != bytes(512):
        headers.append(pos)
        size = tarstream._octal(raw[pos + 124 : pos + 136])
        pos += 512 + -(-size // 512) * 512
    return raw, headers, pos


LONG = "BigEarthNet-S2/S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP/" + "p" * 90
MEMBERS = [(f"{LONG}{i}/{'p' * 90}{i}_B0{i % 9}.tif", 700 + 37 * i) for i in range(6)] + [("short/a_B01.tif", 3)]


def _read(data: bytes, compression: str = "none") -> tuple[list[tarstream.Member], TarStream]:
    stream = TarStream([data], compression)
    return list(stream), stream


def _fix_checksum(raw: bytearray, h: int) -> None:
    raw[h + 148 : h + 156] = b" " * 8
    raw[h + 148 : h + 156] = f"{sum(raw[h : h + 512]):06o}\0 ".encode()


def test_a_zero_length_pax_record_is_damage_not_a_hang() -> None:
    with time_limit(5), pytest.raises(PaxError, match="length of 0"):
        _pax(b"0 path=abc\n")  # looped forever before
    raw, headers, _ = _tar(MEMBERS, tarfile.PAX_FORMAT)
    planted = bytearray(raw)
    h = headers[4]  # [x0, m0, x1, m1, x2, m2, ...]: member 2's pax header
    assert planted[h + 156 : h + 157] == b"x"
    at = planted.find(f" path={MEMBERS[2][0]}\n".encode(), h + 512)
    start = planted.rfind(b"\n", h + 512, at) + 1 or h + 512  # the record's length field
    planted[start:at] = b"0" * (at - start)  # a length of 0: the header's checksum does not cover pax data
    with time_limit(10):
        members, stream = _read(bytes(planted))
    names = [m.name for m in members]
    assert names == [n for i, (n, _) in enumerate(MEMBERS) if i != 2]  # the member it described is skipped
    assert stream.error is None and stream.ended_cleanly
    assert len(stream.damage) == 2 and "pax header at tar byte" in stream.damage[0], stream.damage
    assert "length of 0" in stream.damage[0] and "is skipped: its pax header at tar byte" in stream.damage[1]


@pytest.mark.parametrize(
    "record, why",
    [
        (b"-5 path=x\n", "no decimal length"),
        (b"99 path=x\n", "past the header"),
        (b"9 path=xy\n", "does not end with a newline"),
        (b"9 pathx.\n", "not key=value"),
        (b" 9 path=x\n", "no decimal length"),
        (b"12 size=1_0\n", "not a decimal number"),
        (b"10 path=a\n\0x", "NUL byte"),
    ],
)
def test_malformed_pax_records_are_refused(record: bytes, why: str) -> None:
    with time_limit(5), pytest.raises(PaxError, match=why):
        _pax(record)


def test_well_formed_pax_records_and_padding() -> None:
    assert _pax(b"11 path=ab\n13 size=1234\n" + bytes(30)) == {"path": "ab", "size": "1234"}


def test_an_oversized_long_name_is_damage_and_its_member_skipped() -> None:
    raw, headers, _ = _tar(MEMBERS)
    data = bytearray(raw)
    # member 1's GNU long name claims 1 MiB (a valid header): more than MAX_NAME, its member is dropped
    h = headers[2]  # headers: [L0, m0, L1, m1, ...]
    assert data[h + 156 : h + 157] == b"L"
    data[h + 124 : h + 136] = b"%011o\0" % (1 << 20)
    _fix_checksum(data, h)
    data[h + 512 : h + 512] = b"n" * ((1 << 20) - 512)  # its data, so the next header follows it
    with time_limit(10):
        members, stream = _read(bytes(data))
    assert [m.name for m in members] == [n for i, (n, _) in enumerate(MEMBERS) if i != 1]
    assert f"(the GNU long name at tar byte {h:,} states 1,048,576 bytes, more than 65,536)" in stream.damage[0]
    assert "is skipped: its GNU long name at tar byte" in stream.damage[1] and len(stream.damage) == 2
    assert stream.error is None and stream.ended_cleanly


def test_a_sparse_member_is_damage_and_its_extension_headers_are_skipped() -> None:
    raw, headers, _ = _tar(MEMBERS)
    data = bytearray(raw)
    h = headers[-1]  # the short member, 3 bytes of data in one block
    data[h + 156 : h + 157] = b"S"
    data[h + 482] = 1  # one extension header follows
    _fix_checksum(data, h)
    data[h + 512 : h + 512] = bytes(512)  # the extension header (not extended further)
    members, stream = _read(bytes(data))
    assert [m.name for m in members] == [n for n, _ in MEMBERS[:-1]]
    assert stream.damage == [
        f"the member short/a_B01.tif at tar byte {h:,} is skipped: a sparse file (no archive file is one)"
    ]
    assert stream.ended_cleanly


def test_garbage_past_the_resync_limit_quarantines_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tarstream, "MAX_RESYNC", 64 << 10)
    raw, _, end = _tar(MEMBERS[:2])
    data = raw[:end] + b"\x41" * (128 << 10) + raw[end:]
    members, stream = _read(data)
    assert len(members) == 2
    assert stream.error is not None and "the rest of the download is quarantined" in stream.error
    assert "hold no valid header (checksum mismatch)" in stream.error


# -- fuzz -------------------------------------------------------------------------------------------------------------

SEEDS = {fmt: _tar(MEMBERS, fmt) for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT)}


def _check_bounded(data: bytes) -> None:
    with time_limit(5):
        members, stream = _read(data)
    assert all(len(m.data) <= tarstream.MAX_MEMBER for m in members)
    # the catch-all in TarStream.__iter__ is a safety net: the parser itself handles every input
    assert "could not be parsed" not in (stream.error or ""), stream.error


@BOUNDED
@given(
    st.sampled_from(sorted(SEEDS)),
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=12),
    st.booleans(),
    st.one_of(st.none(), st.integers(0, 1 << 20)),
)
def test_fuzz_mutated_tar_headers(fmt: int, edits: list[tuple[int, int]], fix: bool, cut: int | None) -> None:
    """Byte edits inside the header blocks (and the pax / long-name data after them), checksums recomputed or
    not, the stream cut anywhere."""
    raw, headers, _ = SEEDS[fmt]
    data = bytearray(raw)
    for where, value in edits:
        h = headers[where % len(headers)]
        data[h + (where >> 8) % 1024] = value  # the header and the block after it (pax records, long names)
    if fix:
        for h in headers:
            _fix_checksum(data, h)
    _check_bounded(bytes(data[:cut] if cut is not None else data))


@BOUNDED
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes_as_a_tar(data: bytes) -> None:
    _check_bounded(data)


_RECORD = st.tuples(st.integers(-3, 60), st.sampled_from(["path", "size", "", "GNU.sparse.map", "x" * 30]), st.text())


@BOUNDED
@given(st.lists(_RECORD, max_size=6), st.binary(max_size=8))
def test_fuzz_pax_records(records: list[tuple[int, str, str]], tail: bytes) -> None:
    """Pax data built from records whose lengths are right, off by a few, zero or negative: a dict or a PaxError,
    at once; then the same data inside a pax header of a real tar."""
    data = b""
    for delta, key, value in records:
        body = f" {key}={value}\n".encode()
        n = len(body) + 1
        while len(str(n)) + len(body) != n:  # the length counts its own digits
            n += 1
        length = {-3: -n, -2: 0}.get(delta, n + delta)  # negative, zero, or right / off by a few
        data += str(length).encode() + body
    data += tail
    with time_limit(5):
        try:
            out = _pax(data)
        except PaxError:
            out = None
    if out is not None:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in out.items())
    raw, headers, _ = SEEDS[tarfile.PAX_FORMAT]
    h = headers[0]
    assert raw[h + 156 : h + 157] == b"x"
    size = tarstream._octal(raw[h + 124 : h + 136])
    pax = bytearray(raw)
    padded = -(-size // 512) * 512
    new = data[: 1 << 16]
    pax[h + 512 : h + 512 + padded] = new + bytes(-len(new) % 512)
    pax[h + 124 : h + 136] = b"%011o\0" % len(new)
    _fix_checksum(pax, h)
    _check_bounded(bytes(pax))


def test_damage_notes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tarstream, "MAX_DAMAGE_NOTES", 3)
    raw, headers, _ = _tar(MEMBERS, tarfile.PAX_FORMAT)
    data = bytearray(raw)
    for h in headers:
        if data[h + 156 : h + 157] == b"x":
            data[h + 512] = ord("-")  # every pax record malformed: 6 headers, 12 pieces of damage
    members, stream = _read(bytes(data))
    assert [m.name for m in members] == [MEMBERS[-1][0]]
    assert len(stream.damage) == 4 and stream.damage[-1] == "... and 9 more pieces of damage like these"


def _count_fed(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the compressed bytes handed to the decompressors (the real ones: only counted)."""
    fed = {"bytes": 0, "calls": 0}
    feed = tarstream._Inflater.feed

    def counting(self: Any, data: bytes) -> Iterator[bytes]:
        fed["bytes"] += len(data)
        fed["calls"] += 1
        return feed(self, data)

    monkeypatch.setattr(tarstream._Inflater, "feed", counting)
    return fed


def _pack(data: bytes, compression: str) -> bytes:
    return gzip.compress(data, mtime=0) if compression == "gzip" else zstandard.compress(data)


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_many_tiny_frames_are_read_without_quadratic_copying(compression: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """After each frame's end the rest of the chunk used to be copied whole into the next decompressor (a 990 KB
    chunk of 110,000 frames took 11 s): now each frame costs at most a few slices of FEED_MIN bytes."""
    fed = _count_fed(monkeypatch)
    many = [(f"d/p{i}/p{i}_B01.tif", 600 + i) for i in range(150)]
    raw, _, _ = _tar(many)
    pieces = [raw[i : i + 64] for i in range(0, len(raw), 64)]  # each its own zstd frame or gzip member
    data = b"".join(_pack(p, compression) for p in pieces)
    assert len(pieces) > 1000
    with time_limit(60):
        members, stream = _read(data, compression)
    assert [m.name for m in members] == [n for n, _ in many] and stream.error is None and not stream.damage
    assert fed["bytes"] <= 2 * 1024 * len(pieces), (fed, len(pieces), len(data))  # linear in the frames


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_a_long_run_of_empty_frames_is_damage_read_in_bounded_time(
    compression: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = _count_fed(monkeypatch)
    raw, headers, _ = _tar(MEMBERS)
    first = raw[: headers[2]]  # the first member whole (its GNU long name, its header, its data)
    data = _pack(first, compression) + _pack(b"", compression) * 50_000 + _pack(raw[len(first) :], compression)
    with time_limit(30):
        members, stream = _read(data, compression)
    assert [m.name for m in members] == [MEMBERS[0][0]]
    assert f"more than 1,024 {compression} frames in a row decompress to nothing" in (stream.error or "")
    assert fed["bytes"] <= 2 * 1024 * (1024 + 3), fed
