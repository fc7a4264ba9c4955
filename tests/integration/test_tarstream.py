"""The tar stream reader on decompression bombs (bigearth.archive.tarstream), in a fresh interpreter limited to 1 GB
of address space: a 200 MB member of a zstd download and 400 MB of gzip garbage are read in bounded memory and
recorded as damage. The rest of the reader's tests: tests/unit/test_tarstream.py."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import zstandard

from helpers import REPO
from unit.test_tarstream import MEMBERS, _tar  # the tars of the in-process cases

PLATFORM = str(REPO / "platform")  # the subprocess reads this checkout's package


_BOMB = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # the old reader died here (MemoryError) or swapped
from bigearth.archive import tarstream
from bigearth.archive.tarstream import TarStream
tarstream.MAX_RESYNC = int(sys.argv[3])  # the gzip bomb: garbage past this many bytes ends the reading
data = open(sys.argv[1], "rb").read()
stream = TarStream([data[i : i + (8 << 20)] for i in range(0, len(data), 8 << 20)], sys.argv[2])
names = [m.name for m in stream]
# this process's own high-water mark (ru_maxrss can carry the forking parent's over exec)
peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) << 10
print(json.dumps({"names": names, "damage": stream.damage, "error": stream.error, "peak": peak}))
"""


def _bomb(tmp_path: Path, data: bytes, compression: str, resync: int = 256 << 20) -> dict:  # type: ignore[type-arg]
    path = tmp_path / "bomb"
    path.write_bytes(data)
    run = subprocess.run(
        [sys.executable, "-c", _BOMB, str(path), compression, str(resync)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": PLATFORM},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return dict(json.loads(run.stdout))


def _streaming_tar(parts: list[tuple[str, int, bytes]]) -> Iterator[bytes]:
    """A tar of (name, size, fill byte) members, produced block by block (the bomb is never held here either)."""
    for name, size, fill in parts:
        info = tarfile.TarInfo(name)
        info.size = size
        yield info.tobuf(tarfile.GNU_FORMAT)
        piece = fill * (1 << 20)
        for _ in range(size >> 20):
            yield piece
        yield fill * (size & ((1 << 20) - 1)) + bytes(-size % 512)
    yield bytes(1024)


def test_a_zstd_bomb_is_read_in_bounded_memory_and_recorded(tmp_path: Path) -> None:
    big = 200 << 20  # 200 MB of one byte inside one member: a few hundred KB compressed
    parts = [("top/p/p_B01.tif", 10, b"a"), ("top/p/p_B02.tif", big, b"b"), ("top/p/p_B03.tif", 20, b"c")]
    z = zstandard.ZstdCompressor(level=3).compressobj()
    data = b"".join(z.compress(b) for b in _streaming_tar(parts)) + z.flush()
    assert len(data) < 1 << 20
    r = _bomb(tmp_path, data, "zstd")
    assert r["names"] == ["top/p/p_B01.tif", "top/p/p_B03.tif"] and r["error"] is None
    assert r["damage"] == [  # nothing of it held: the reader looked for the next valid header, and found it
        f"tar bytes 1,024-{1024 + 512 + big:,} hold no valid header (the member top/p/p_B02.tif at tar byte 1,024 "
        f"states {big:,} bytes, more than the 64 MiB any archive file has): the member(s) there were skipped"
    ]
    assert r["peak"] < 200 << 20, r["peak"]


def test_a_gzip_bomb_is_read_in_bounded_memory_and_recorded(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as g:
        raw, _, end = _tar(MEMBERS[:1])
        g.write(raw[:end])  # one good member, then no valid header at all
        piece = b"\x41" * (1 << 20)
        for _ in range(400):
            g.write(piece)
    data = buf.getvalue()
    assert len(data) < 1 << 20
    r = _bomb(tmp_path, data, "gzip", resync=32 << 20)  # 400 MB of garbage: reading ends after 32 MiB of it
    assert r["names"] == [MEMBERS[0][0]] and r["damage"] == []
    assert "more than 32 MiB without one, the rest of the download is quarantined" in r["error"]
    assert r["peak"] < 200 << 20, r["peak"]
