"""Catalogues from the REAL published lists and metadata: counts as published (FACTS.md 1.1, 1.5, 2.4). Integration
tier: every test reads the lists or the metadata at their published size (590,326 and 480,038 rows)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bigearth.archive.catalogue import ArchiveError, build_catalogue, detect_layout
from bigearth.core.storage import open_fs
from helpers import LISTS_V1, LISTS_V2, REAL_V1

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def v1_catalogue():  # type: ignore[no-untyped-def]
    return build_catalogue(str(REAL_V1), lists=str(LISTS_V1))


@pytest.fixture(scope="module")
def v2_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("v2meta")
    for name in ("metadata.parquet", "metadata_for_patches_with_snow_cloud_or_shadow.parquet"):
        (root / name).symlink_to(LISTS_V2 / name)
    return root


def test_v1_lists_give_the_published_counts(v1_catalogue) -> None:  # type: ignore[no-untyped-def]
    c = v1_catalogue
    assert c.version == "v1" and c.total == 590_326
    assert len(c) == 519_284
    assert c.split_counts == {"train": 269_695, "validation": 123_723, "test": 125_866}
    # snow 61,707 + cloud 9,280 + no-19 57, of which 1 snowy and 1 cloudy: attributed once each
    assert c.excluded_counts == {"seasonal_snow": 61_707, "cloud_or_shadow": 9_280, "no_19_class_label": 55}
    assert sum(c.excluded_counts.values()) == 590_326 - 519_284


def test_v1_official_splits_are_exactly_the_recommended_set(v1_catalogue) -> None:  # type: ignore[no-untyped-def]
    assert v1_catalogue.pairs["split"].null_count == 0  # every kept pair is in an official split


def test_v1_include_snow_cloud(tmp_path: Path) -> None:
    c = build_catalogue(str(REAL_V1), lists=str(LISTS_V1), include_snow_cloud=True, include_no_19_labels=True)
    assert len(c) == 590_326 and sum(c.excluded_counts.values()) == 0
    assert c.split_counts["unassigned"] == 590_326 - 519_284  # the official splits leave them out


def test_v1_without_lists_says_what_is_needed() -> None:
    with pytest.raises(ArchiveError) as e:
        build_catalogue(str(REAL_V1))
    msg = str(e.value)
    for needed in (
        "--lists",
        "s1_s2_mapping.csv",
        "train.csv",
        "val.csv",
        "test.csv",
        "patches_with_seasonal_snow.csv",
        "patches_with_cloud_and_shadow.csv",
        "patches_with_no_19_class_targets.csv",
        "https://git.tu-berlin.de/rsim/BigEarthNet-MM_19-classes_models",
    ):
        assert needed in msg


def test_v1_list_missing_is_named(tmp_path: Path) -> None:
    for f in LISTS_V1.iterdir():
        if "no_19" not in f.name:
            (tmp_path / f.name).symlink_to(f)
    with pytest.raises(ArchiveError, match=r"patches_with_no_19_class_targets.csv\(.bz2\) not found"):
        build_catalogue(str(REAL_V1), lists=str(tmp_path))


def test_v2_metadata_gives_the_published_counts(v2_root: Path) -> None:
    c = build_catalogue(str(v2_root))
    assert c.version == "v2" and c.total == 480_038 + 69_450
    assert len(c) == 480_038
    assert c.split_counts == {"train": 237_871, "validation": 122_342, "test": 119_825}
    assert c.excluded_counts == {"seasonal_snow": 60_773, "cloud_or_shadow": 8_677, "no_19_class_label": 0}
    row = c.pairs.slice(0, 1).to_pylist()[0]
    assert row["tile"] == "33UUP" and row["country"] == "Austria" and row["split"] == "test"
    everything = build_catalogue(str(v2_root), include_snow_cloud=True)
    assert everything.split_counts == {
        "train": 237_871 + 34_673,
        "validation": 122_342 + 17_235,
        "test": 119_825 + 17_542,
    }


def test_v2_subset_and_limit(v2_root: Path) -> None:
    ids = ["S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43", "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_89_18"]
    c = build_catalogue(str(v2_root), patches=ids)
    assert c.pairs["patch_id"].to_pylist() == ids
    assert len(build_catalogue(str(v2_root), limit=10)) == 10


def test_detection_errors(tmp_path: Path) -> None:
    fs, root = open_fs(str(tmp_path))
    with pytest.raises(ArchiveError, match="not a BigEarthNet archive root"):
        detect_layout(fs, root)
    (tmp_path / "BigEarthNet-S2").mkdir()
    with pytest.raises(ArchiveError, match=r"metadata\.parquet not found"):
        build_catalogue(str(tmp_path))
