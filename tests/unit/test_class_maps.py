"""Class maps as paletted PNG (`bigearth.core.quicklook`): the PNG's own chunks read by hand (zlib, no PIL) and by
PIL, the pixels, the palette in the 19 classes' colours, the ignored index transparent; the area shares; hostile
input refused with a message."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest

from bigearth.core.labels import (
    BEN19,
    BEN19_COLOURS,
    CLC_CODE_OF_19,
    CLC_UNLABELED,
    IGNORE_INDEX,
    UnknownLabelError,
)
from bigearth.core.quicklook import area_shares, class_map_png, reference_map_png, scored_pixels


def _chunks(data: bytes) -> dict[bytes, bytes]:
    """A PNG's chunks by type (IDAT joined), each CRC checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out: dict[bytes, bytes] = {}
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc
        out[kind] = out.get(kind, b"") + body
        pos += 12 + length
    return out


def _decode(data: bytes) -> tuple[np.ndarray, list[tuple[int, int, int]], bytes]:
    """An 8-bit paletted PNG decoded by hand: (indices [H, W], palette, tRNS alphas)."""
    chunks = _chunks(data)
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, colour_type, interlace) == (8, 3, 0)
    raw = zlib.decompress(chunks[b"IDAT"])
    rows, prev = [], bytearray(width)
    for y in range(height):
        line = raw[y * (width + 1) : (y + 1) * (width + 1)]
        kind, cur = line[0], bytearray(line[1:])
        for x in range(width):  # PNG filters with 1 byte per pixel
            a, b = (cur[x - 1] if x else 0), prev[x]
            c = prev[x - 1] if x else 0
            if kind == 1:
                cur[x] = (cur[x] + a) & 255
            elif kind == 2:
                cur[x] = (cur[x] + b) & 255
            elif kind == 3:
                cur[x] = (cur[x] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                cur[x] = (cur[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(cur))
        prev = cur
    pal = chunks[b"PLTE"]
    palette = [(pal[i], pal[i + 1], pal[i + 2]) for i in range(0, len(pal), 3)]
    return np.frombuffer(b"".join(rows), np.uint8).reshape(height, width), palette, chunks.get(b"tRNS", b"")


def _a_map() -> np.ndarray:
    rng = np.random.default_rng(0)
    m = rng.integers(0, len(BEN19), size=(120, 120)).astype(np.uint8)
    m[:10] = IGNORE_INDEX  # a band of ignored pixels
    m[50, 50] = 18
    return m


def test_a_class_map_is_a_paletted_png_in_the_classes_colours_with_ignored_pixels_transparent() -> None:
    m = _a_map()
    data = class_map_png(m)
    indices, palette, alphas = _decode(data)
    assert np.array_equal(indices, m)
    assert palette[: len(BEN19)] == list(BEN19_COLOURS)
    assert len(alphas) > IGNORE_INDEX and alphas[IGNORE_INDEX] == 0  # the ignored index transparent
    assert all(a == 255 for a in alphas[: len(BEN19)])  # every class opaque
    pil = pytest.importorskip("PIL.Image")
    image = pil.open(io.BytesIO(data))
    assert image.mode == "P" and image.size == (120, 120)
    rgba = np.asarray(image.convert("RGBA"))
    assert tuple(rgba[50, 50]) == (*BEN19_COLOURS[18], 255)
    assert (rgba[:10, :, 3] == 0).all() and (rgba[10:, :, 3] == 255).all()


def test_a_reference_map_is_drawn_from_its_clc_codes() -> None:
    targets = _a_map()
    codes = np.where(targets == IGNORE_INDEX, 0, np.asarray(CLC_CODE_OF_19, np.uint16)[targets % 19]).astype(np.uint16)
    codes[11, :5] = CLC_UNLABELED[0]  # unlabeled: ignored too
    want = targets.copy()
    want[11, :5] = IGNORE_INDEX
    indices, _, alphas = _decode(reference_map_png(codes))
    assert np.array_equal(indices, want) and alphas[IGNORE_INDEX] == 0
    codes[0, 0] = 777  # no CLC code of the archive
    with pytest.raises(UnknownLabelError, match=r"S2X_patch.*777"):
        reference_map_png(codes, where="S2X_patch")


def test_area_shares_count_the_scored_pixels_only() -> None:
    m = np.full((4, 5), IGNORE_INDEX, np.uint8)
    m[0, :4] = 2
    m[1, :2] = 17
    shares = area_shares(m)
    assert list(shares) == list(BEN19)
    assert shares["Arable land"] == pytest.approx(4 / 6) and shares["Inland waters"] == pytest.approx(2 / 6)
    assert sum(shares.values()) == pytest.approx(1.0) and scored_pixels(m) == 6
    empty = np.full((3, 3), IGNORE_INDEX, np.uint8)
    assert set(area_shares(empty).values()) == {0.0} and scored_pixels(empty) == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.zeros((120,), np.uint8), r"2-D \[H, W\] map, got shape \(120,\)"),
        (np.zeros((2, 120, 120), np.uint8), r"got shape \(2, 120, 120\)"),
        (np.zeros((0, 4), np.uint8), r"got shape \(0, 4\)"),
        (np.zeros((4, 4), np.int64), "uint8 class indices, got dtype int64"),
        (np.zeros((4, 4), np.float32), "got dtype float32"),
        (np.full((4, 4), 19, np.uint8), r"index\(es\) \[19\] are no class"),
    ],
)
def test_hostile_class_maps_are_refused_with_a_message(value: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        class_map_png(value)
    if value.dtype != np.uint8 or value.ndim != 2 or not value.size:
        with pytest.raises(ValueError, match=message):
            area_shares(value)


def test_hostile_reference_maps_are_refused_with_a_message() -> None:
    with pytest.raises(ValueError, match="uint16 CLC codes, got dtype int32"):
        reference_map_png(np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match=r"P1: expected a 2-D \[H, W\] map of CLC codes, got shape \(16,\)"):
        reference_map_png(np.zeros(16, np.uint16), where="P1")
