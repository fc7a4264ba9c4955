"""One value of one row of a Parquet column chunk, read through the file's page index: the offset index says
which page holds the row and where it is, and only that page is read, checked against its CRC32 and decompressed.

`PatchStore` reads the band columns of a single pair this way instead of whole row groups (docs/benchmarks.md):
shards written since the page index was added hold `PAGE_PAIRS` pairs per page (`bigearth.shards.format.ShardWriter`).
It covers what that writer produces: data pages v1 or v2, PLAIN-encoded fixed-size values, no repetition levels,
a definition level of at most 1, codecs lz4 (LZ4_RAW), zstd, snappy, gzip or none, a CRC32 on every page.
Anything else (older shards without a page index, format 1's variable-size values, a page without a checksum) is
`Unsupported`, and the caller reads the row group instead (pyarrow, verifying the checksums there are). A Thrift
list or map whose declared size cannot fit in the bytes left is `CorruptPage` before anything loops over it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

DATA_PAGE, DICTIONARY_PAGE, DATA_PAGE_V2 = 0, 2, 3
PLAIN = 0
CODECS = {"LZ4_RAW": "lz4_raw", "LZ4": "lz4_raw", "ZSTD": "zstd", "SNAPPY": "snappy", "GZIP": "gzip"}


class Unsupported(Exception):
    """The column chunk is not laid out as this reader expects: read the row group instead."""


class CorruptPage(ValueError):
    """A page header or page does not parse, or fails its checksum."""


# ------------------------------------------------------------------------------------------- thrift compact
class _Thrift:
    """Just enough of Thrift's compact protocol to read a `PageHeader` (unknown fields are skipped)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise EOFError
        self.pos += 1
        return self.data[self.pos - 1]

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 70:
                raise CorruptPage("varint too long")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def skip(self, kind: int, depth: int = 0) -> None:
        if depth > 16:
            raise CorruptPage("nesting too deep")
        if kind in (1, 2):  # bool in a field header: no bytes
            return
        if kind == 3:
            self.byte()
        elif kind in (4, 5, 6):
            self.varint()
        elif kind == 7:
            self._take(8)
        elif kind == 8:
            self._take(self.varint())
        elif kind in (9, 10):
            head = self.byte()
            size = self._size(head >> 4 if head >> 4 != 15 else self.varint(), 1)
            for _ in range(size):
                self.skip(self._element(head & 0x0F), depth + 1)
        elif kind == 11:
            size = self._size(self.varint(), 2)
            if size:
                types = self.byte()
                for _ in range(size):
                    self.skip(self._element(types >> 4), depth + 1)
                    self.skip(self._element(types & 0x0F), depth + 1)
        elif kind == 12:
            self.struct({}, depth + 1)
        else:
            raise CorruptPage(f"unknown thrift type {kind}")

    def _size(self, size: int, least: int) -> int:
        """A container's declared element count, refused when its elements (each at least `least` bytes) cannot fit
        in the bytes left: a declared size is never looped over unchecked."""
        if size * least > len(self.data) - self.pos:
            raise CorruptPage(
                f"a container declares {size} elements, more than the {len(self.data) - self.pos} bytes left"
            )
        return size

    @staticmethod
    def _element(kind: int) -> int:
        """A list's or map's element type as skipped: a bool element is one byte there (in a field header, none)."""
        return 3 if kind in (1, 2) else kind

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise EOFError
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def struct(self, wanted: dict[int, Any], depth: int = 0) -> dict[int, Any]:
        """The `wanted` fields of a struct: `int`, `bool`, a dict (a nested struct's wanted fields) or `[dict]` (a
        list of such structs); the rest skipped. A wanted field of another type is `CorruptPage`."""
        if depth > 16:
            raise CorruptPage("nesting too deep")
        out: dict[int, Any] = {}
        last = 0
        while True:
            head = self.byte()
            if head == 0:
                return out
            kind, delta = head & 0x0F, head >> 4
            fid = last + delta if delta else self.zigzag()
            last = fid
            spec = wanted.get(fid)
            if spec is None:
                self.skip(kind, depth)
            elif spec is bool and kind in (1, 2):
                out[fid] = kind == 1
            elif spec is int and kind in (3, 4, 5, 6):
                out[fid] = self.byte() if kind == 3 else self.zigzag()
            elif isinstance(spec, dict) and kind == 12:
                out[fid] = self.struct(spec, depth + 1)
            elif isinstance(spec, list) and kind == 9:
                head = self.byte()
                size = self._size(head >> 4 if head >> 4 != 15 else self.varint(), 1)
                if head & 0x0F != 12:
                    raise CorruptPage(f"field {fid}: expected a list of structs")
                out[fid] = [self.struct(spec[0], depth + 1) for _ in range(size)]
            else:
                raise CorruptPage(f"field {fid} has thrift type {kind}, not the expected one")


#: PageHeader: type, uncompressed and compressed size, crc, data_page_header (num_values, encoding), and
#: data_page_header_v2 (num_rows, encoding, definition and repetition levels' lengths, is_compressed).
_HEADER_FIELDS = {1: int, 2: int, 3: int, 4: int, 5: {1: int, 2: int}, 8: {3: int, 4: int, 5: int, 6: int, 7: bool}}
#: FileMetaData.row_groups[].columns[]: offset_index_offset (4), offset_index_length (5).
_FOOTER_FIELDS = {4: [{1: [{4: int, 5: int}]}]}
_OFFSET_INDEX = {1: [{1: int, 2: int, 3: int}]}  # page_locations[]: offset, compressed_page_size, first_row_index


@dataclass(frozen=True)
class PageLocation:
    offset: int  # of the page header
    size: int  # header and page
    first_row: int


def offset_index_locations(footer: bytes) -> list[list[tuple[int, int] | None]]:
    """Per row group, per column: where the offset index is (offset, length), or None; `footer` is the file's
    Thrift FileMetaData (the bytes before its length and `PAR1`)."""
    try:
        meta = _Thrift(footer).struct(_FOOTER_FIELDS)
    except EOFError:
        raise CorruptPage("the footer is cut short") from None
    return [[(c[4], c[5]) if 4 in c and 5 in c else None for c in rg.get(1, [])] for rg in meta.get(4, [])]


def read_footer(read_at: Any, size: int) -> bytes:
    """The Thrift footer of a Parquet file of `size` bytes."""
    tail = read_at(8, size - 8)
    if len(tail) != 8 or tail[4:] != b"PAR1":
        raise CorruptPage("not a Parquet file (no PAR1 at its end)")
    (length,) = struct.unpack("<I", tail[:4])
    if length + 12 > size:
        raise CorruptPage("footer length is past the start of the file")
    return bytes(read_at(length, size - 8 - length))


def page_locations(data: bytes) -> list[PageLocation]:
    """An `OffsetIndex`'s pages."""
    try:
        index = _Thrift(data).struct(_OFFSET_INDEX)
    except EOFError:
        raise CorruptPage("the offset index is cut short") from None
    return [PageLocation(p.get(1, -1), p.get(2, -1), p.get(3, -1)) for p in index.get(1, [])]


def _header(data: bytes) -> tuple[dict[int, Any], int]:
    t = _Thrift(data)
    try:
        return t.struct(_HEADER_FIELDS), t.pos
    except EOFError:
        raise CorruptPage("page header is cut short") from None


def _levels(data: bytes, count: int) -> list[int]:
    """`count` definition levels (bit width 1) from Parquet's RLE / bit-packed hybrid."""
    out: list[int] = []
    t = _Thrift(data)
    try:
        while len(out) < count:
            head = t.varint()
            if head & 1:
                groups = head >> 1
                bits = t._take(groups)
                out += [(b >> i) & 1 for b in bits for i in range(8)]
            else:
                out += [t.byte() & 1] * min(head >> 1, count - len(out))
    except EOFError:
        raise CorruptPage("definition levels are cut short") from None
    return out[:count]


def read_value(
    read_at: Any, compression: str, pages: list[PageLocation], rows: int, row: int, width: int, max_def: int
) -> bytes | None:
    """The fixed-size (`width` bytes) value of `row` in a column chunk (`compression` as `ColumnChunkMetaData`
    names it, `rows` rows, `pages` from its offset index), reading the one page that holds it; None for a null."""
    codec = CODECS.get(compression)
    if codec is None and compression != "UNCOMPRESSED":
        raise Unsupported(f"codec {compression}")
    k = max((i for i, p in enumerate(pages) if p.first_row <= row), default=None)
    if k is None or pages[k].size <= 0 or pages[k].offset < 0:
        raise CorruptPage(f"the offset index has no page for row {row}")
    loc = pages[k]
    count = (pages[k + 1].first_row if k + 1 < len(pages) else rows) - loc.first_row
    at = row - loc.first_row
    if not 0 <= at < count or loc.size > 2 * count * (width + 1) + 65536:  # no page is larger than its values
        raise CorruptPage(f"the offset index gives an impossible page at byte {loc.offset} for row {row}")
    buf = read_at(loc.size, loc.offset)
    if len(buf) != loc.size:
        raise CorruptPage(f"page at byte {loc.offset} is cut short")
    h, n = _header(buf)
    raw = buf[n:]
    if h.get(3) != len(raw) or not 0 <= h.get(2, -1) <= count * (width + 1) + 64:  # no bomb: a page of `count` values
        raise CorruptPage(f"page at byte {loc.offset}: its header and the offset index disagree on its size")
    if h.get(4) is None:  # the writer checksums every page: read it through pyarrow's verified row-group read
        raise Unsupported(f"page at byte {loc.offset} has no checksum")
    if zlib.crc32(raw) != h[4] & 0xFFFFFFFF:
        raise CorruptPage(f"page at byte {loc.offset} fails its checksum")
    levels: list[int] | None = None
    if h.get(1) == DATA_PAGE and isinstance(h.get(5), dict):
        if h[5].get(2) != PLAIN or h[5].get(1) != count:
            raise Unsupported("a data page that is not PLAIN or not one value per row")
        data = _decompress(raw, h[2], codec) if codec else raw
        values = data
        if max_def:
            (dlen,) = struct.unpack_from("<I", data, 0) if len(data) >= 4 else (-1,)
            if dlen < 0 or 4 + dlen > len(data):
                raise CorruptPage("definition levels are cut short")
            levels = _levels(data[4 : 4 + dlen], count)
            values = data[4 + dlen :]
    elif h.get(1) == DATA_PAGE_V2 and isinstance(h.get(8), dict):
        v2 = h[8]
        if v2.get(4) != PLAIN or v2.get(6, 0) or v2.get(3) != count:
            raise Unsupported("a v2 page with repetition levels, another encoding or not one value per row")
        dlen = v2.get(5, 0)
        if not 0 <= dlen <= min(len(raw), h[2]):
            raise CorruptPage("definition levels are cut short")
        if max_def:
            levels = _levels(raw[:dlen], count)
        body = raw[dlen:]
        values = _decompress(body, h[2] - dlen, codec) if codec and v2.get(7, True) else body
    else:
        raise Unsupported(f"page type {h.get(1)}")
    if levels is not None:
        if not levels[at]:
            return None
        at = sum(levels[:at])
    value = values[at * width : (at + 1) * width]
    if len(value) != width:
        raise CorruptPage(f"page at byte {loc.offset} holds fewer values than its header says")
    return bytes(value)


def _decompress(data: bytes, size: int, codec: str) -> bytes:
    try:
        return pa.decompress(data, decompressed_size=size, codec=codec, asbytes=True)
    except (pa.ArrowException, OSError) as e:
        raise CorruptPage(f"page does not decompress ({e})") from None
