from __future__ import annotations

from datetime import datetime

import pytest

from bigearth.archive.layouts import layout_for
from bigearth.archive.names import PatchNameError, check_safe_id, parse_s1, parse_s2


def test_v1_hour_digit_bug() -> None:
    n = parse_s2("S2B_MSIL2A_20170924T93020_69_24")
    assert (n.version, n.h, n.v, n.tile) == (1, 69, 24, None)
    assert n.timestamp == datetime(2017, 9, 24, 9, 30, 20)
    # the hour-digit bug can make the name's time invalid: the JSON then gives the time
    assert parse_s2("S2B_MSIL2A_20180204T94161_57_38").timestamp is None


def test_v2_names_and_folders() -> None:
    pid = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43"
    n = parse_s2(pid)
    assert (n.version, n.tile, n.orbit, n.h, n.v) == (2, "33UUP", 22, 75, 43)
    assert n.tile_product == "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP"
    s1 = parse_s1("S1A_IW_GRDH_1SDV_20170613T165043_35VPK_9_89")  # v2 keeps the unpadded v1 S1 name
    assert (s1.tile, s1.h, s1.v, s1.scene) == ("35VPK", 9, 89, "S1A_IW_GRDH_1SDV_20170613T165043")
    lay = layout_for("v2", "/a")
    assert lay.s2_band(pid, "B8A") == f"/a/BigEarthNet-S2/{n.tile_product}/{pid}/{pid}_B8A.tif"
    assert lay.s1_band(s1.name, "VV") == f"/a/BigEarthNet-S1/{s1.scene}/{s1.name}/{s1.name}_VV.tif"
    assert lay.s2_json(pid) is None
    v1 = layout_for("v1", "/b")
    assert v1.s2_band("S2B_MSIL2A_20170924T93020_69_24", "B01").startswith("/b/BigEarthNet-v1.0/S2B_")
    assert v1.s1_json(s1.name) == f"/b/BigEarthNet-S1-v1.0/{s1.name}/{s1.name}_labels_metadata.json"


@pytest.mark.parametrize("bad", ["", "S2A_MSIL2A_2017", "../etc/passwd", "S2C_MSIL2A_20170613T101031_1_2"])
def test_bad_names_are_explained(bad: str) -> None:
    with pytest.raises(PatchNameError, match="expected"):
        parse_s2(bad)


def test_safe_id() -> None:
    assert check_safe_id("S2A_MSIL2A_20170613T101031_87_48")
    for bad in ["../x", "S2A_MSIL2A/../../x", "S2A_MSIL2A_2017 0613", "x" * 5]:
        with pytest.raises(PatchNameError):
            check_safe_id(bad)
