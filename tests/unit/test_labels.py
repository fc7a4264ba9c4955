"""The nomenclatures against every row of the tables in FACTS.md section 3 (parsed from the file itself)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bigearth.core import labels as lab
from helpers import FACTS

pytestmark = pytest.mark.real


def _section(title: str) -> str:
    text = FACTS.read_text()
    start = text.index(title)
    end = text.find("\n### ", start + 1)
    return text[start : end if end > 0 else None]


@pytest.fixture(scope="module")
def facts_literals() -> dict[str, object]:
    block = re.search(r"```python\n(.*?)```", _section("### 3.1"), re.S)
    assert block
    ns: dict[str, object] = {}
    exec(block.group(1), ns)
    return ns


def _table_rows(section: str) -> list[list[str]]:
    rows = []
    for line in _section(section).splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows[1:]  # header dropped


def test_names_and_order_match_facts(facts_literals: dict[str, object]) -> None:
    assert list(lab.BEN43) == facts_literals["BEN43"]
    assert list(lab.BEN19) == facts_literals["BEN19"]
    assert [list(m) for m in lab.LABEL_CONVERSION] == facts_literals["LABEL_CONVERSION"]
    assert facts_literals["LABEL_CONVERTER"] == lab.LABEL_CONVERTER
    assert list(lab.DROPPED_43) == facts_literals["DROPPED_43"]
    assert len(lab.DROPPED_43) == 11


def test_name_level_merges_table() -> None:
    rows = _table_rows("### 3.2")
    assert len(rows) == 9
    for target, members in rows:
        names = [m.split("(")[0].strip() for m in members.split(" + ")]
        for name in names:
            assert lab.convert_43_to_19([name]) == [target], (name, target)
    # every other 19-class is a 1:1 rename of one 43-class
    merged = {t for t, _ in rows}
    for i19, members in enumerate(lab.LABEL_CONVERSION):
        if lab.BEN19[i19] not in merged:
            assert len(members) == 1
    assert lab.convert_43_to_19(["Transitional woodland/shrub"]) == ["Transitional woodland, shrub"]


def test_clc_code_table() -> None:
    rows = _table_rows("### 3.3")
    assert len(rows) == 20
    for codes, target in rows:
        code_list = [int(c) for c in codes.split(",")]
        if target == "UNLABELED":
            assert sorted(code_list) == sorted(lab.CLC_UNLABELED)
            assert lab.clc_codes_to_19(code_list) == []
        else:
            name = target.replace("…", "").strip()
            for code in code_list:
                (got,) = lab.clc_codes_to_19([code])
                assert got.startswith(name), (code, got, name)
    with pytest.raises(lab.UnknownLabelError, match="unknown CLC code 100"):
        lab.clc_codes_to_19([100])


def test_dropped_classes_vanish_and_order_is_official() -> None:
    assert lab.convert_43_to_19(["Airports", "Burnt areas", "Intertidal flats"]) == []
    got = lab.convert_43_to_19(["Water bodies", "Continuous urban fabric", "Discontinuous urban fabric"])
    assert got == ["Urban fabric", "Inland waters"]


@pytest.mark.parametrize("nomenclature", [19, 43])
def test_encode_decode_roundtrip(nomenclature: int) -> None:
    names = lab.class_names(nomenclature)  # type: ignore[arg-type]
    pick = [names[0], names[5], names[-1]]
    vec = lab.encode(pick, nomenclature)  # type: ignore[arg-type]
    assert vec.dtype == np.float32 and vec.shape == (nomenclature,) and vec.sum() == 3
    assert lab.decode(vec, nomenclature) == pick  # type: ignore[arg-type]
    many = lab.encode_many([pick, [names[1]]], nomenclature)  # type: ignore[arg-type]
    assert many.shape == (2, nomenclature) and many[1, 1] == 1


def test_unknown_label_is_named() -> None:
    with pytest.raises(lab.UnknownLabelError, match="unknown 19-class label 'Forest'"):
        lab.encode(["Forest"])
    with pytest.raises(ValueError, match="expected a vector of 19 entries"):
        lab.decode(np.zeros(43))


def test_reference_targets_map_every_code_as_the_image_labels_do():
    from bigearth.core.labels import CLC_UNLABELED, IGNORE_INDEX, reference_targets

    codes = np.array(sorted(lab.CLC_CODE_TO_19) + list(CLC_UNLABELED) + [0], np.uint16).reshape(1, -1)
    targets = reference_targets(codes)
    assert targets.dtype == np.uint8 and targets.shape == codes.shape
    for code, t in zip(codes[0], targets[0], strict=True):
        names = lab.clc_codes_to_19([int(code)]) if code else []
        assert (lab.BEN19[t] if t != IGNORE_INDEX else None) == (names[0] if names else None), code
    assert (targets[0, len(lab.CLC_CODE_TO_19) :] == IGNORE_INDEX).all()


@pytest.mark.parametrize("bad", [5, 1000, 65535, -3])
def test_reference_targets_name_an_unknown_code_and_the_patch(bad):
    from bigearth.core.labels import reference_targets

    with pytest.raises(lab.UnknownLabelError, match=rf"patch P: unknown CLC code\(s\) \[{bad}\]"):
        reference_targets(np.array([[111, bad]], np.int32), "patch P")
    with pytest.raises(lab.UnknownLabelError, match="integer"):
        reference_targets(np.array([111.0]), "patch P")


def test_colours_one_distinct_per_19_class():
    assert len(lab.BEN19_COLOURS) == len(lab.BEN19) == len(set(lab.BEN19_COLOURS))
    assert lab.IGNORE_COLOUR not in lab.BEN19_COLOURS
    assert all(0 <= c <= 255 for rgb in lab.BEN19_COLOURS for c in rgb)


def test_season_of_every_month():
    from bigearth.core.seasons import season

    assert [season(m) for m in range(1, 13)] == ["winter"] * 2 + ["spring"] * 3 + ["summer"] * 3 + ["autumn"] * 3 + [
        "winter"
    ]
    with pytest.raises(ValueError, match="1-12"):
        season(0)


def test_the_real_reference_map_maps_to_its_19_classes_pixel_for_pixel():
    """The archive's own map (FACTS.md 2.3: 26_57 holds {211: 7075, 231: 1154, 311: 4131, 313: 2040} pixels)."""
    from bigearth.archive.geotiff import read_file
    from bigearth.core.labels import reference_targets
    from helpers import SHARED

    pid = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"
    path = SHARED / "bigearthnet/real/v2/Reference_Maps" / pid.rsplit("_", 2)[0] / pid / f"{pid}_reference_map.tif"
    codes = read_file(str(path)).array
    targets = reference_targets(codes, pid)
    got = dict(zip(*np.unique(targets, return_counts=True), strict=True))
    want = {"Arable land": 7075, "Pastures": 1154, "Broad-leaved forest": 4131, "Mixed forest": 2040}
    assert {lab.BEN19[int(k)]: int(v) for k, v in got.items()} == want


def test_the_uint16_table_agrees_with_the_code_table_and_decodes_without_copies():
    """`CLC_LUT_U16`: `CLC_LUT_19` for every code a map may hold, `UNKNOWN_CODE` for every other uint16; the
    maps' decoding allocates little more than its uint8 output (no clipped intp copy: 8 bytes a pixel)."""
    import tracemalloc

    from bigearth.core.labels import CLC_LUT_19, CLC_LUT_U16, UNKNOWN_CODE, reference_targets

    known = np.array(sorted({0, *lab.CLC_CODE_TO_19, *lab.CLC_UNLABELED}))
    assert CLC_LUT_U16.shape == (2**16,) and np.array_equal(CLC_LUT_U16[known], CLC_LUT_19[known])
    others = np.setdiff1d(np.arange(2**16), known)
    assert (CLC_LUT_U16[others] == UNKNOWN_CODE).all() and UNKNOWN_CODE not in CLC_LUT_19
    pool = np.concatenate([known, [0, 999]]).astype(np.uint16)
    codes = pool[np.random.default_rng(0).integers(0, len(pool), (64, 120, 120))]
    reference_targets(codes)
    tracemalloc.start()
    try:
        targets = reference_targets(codes)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(targets, CLC_LUT_19[codes])
    assert peak < 3 * targets.nbytes, peak
    with pytest.raises(lab.UnknownLabelError, match=r"patch P: unknown CLC code\(s\) \[1000\]"):
        reference_targets(np.array([[111, 1000]], np.uint16), "patch P")
