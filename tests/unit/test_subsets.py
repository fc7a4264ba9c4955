"""Metadata subsets (bigearth.shards.subsets) and per-group figures (bigearth.evaluation.groups): pure, no Ray."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from bigearth.evaluation.groups import MIN_GROUP_PAIRS, UNKNOWN, by_group, group_keys
from bigearth.shards.subsets import (
    EmptySubsetError,
    MetadataSubset,
    UnknownSubsetValueError,
    check_selected,
    check_values,
    season_column,
    subset_record,
)


def _table() -> pa.Table:
    stamps = [dt.datetime(2017, m, 3, 10, 5) for m in (1, 4, 7, 10, 12, 6)] + [None]
    return pa.table(
        {
            "country": ["Austria", "Austria", "Portugal", "Serbia", "Portugal", "Austria", None],
            "s2_acquisition": pa.array(stamps, pa.timestamp("ms")),
        }
    )


def test_season_column_follows_the_month() -> None:
    assert season_column(_table().column("s2_acquisition")).to_pylist() == [
        "winter",
        "spring",
        "summer",
        "autumn",
        "winter",
        "summer",
        None,
    ]


def test_include_and_exclude_countries_and_seasons() -> None:
    t = _table()
    assert MetadataSubset().mask(t).all()
    assert MetadataSubset(countries={"include": ["Austria"]}).mask(t).tolist() == [1, 1, 0, 0, 0, 1, 0]
    # exclude keeps the pairs without a country: nothing says they are from an excluded one
    assert MetadataSubset(countries={"exclude": ["Austria"]}).mask(t).tolist() == [0, 0, 1, 1, 1, 0, 1]
    assert MetadataSubset(seasons={"include": ["summer", "winter"]}).mask(t).tolist() == [1, 0, 1, 0, 1, 1, 0]
    both = MetadataSubset(countries={"exclude": ["Portugal"]}, seasons={"exclude": ["winter"]})
    assert both.mask(t).tolist() == [0, 1, 0, 1, 0, 1, 1]
    assert both.describe() == "data.countries exclude ['Portugal']; data.seasons exclude ['winter']"
    assert MetadataSubset().describe() == "all pairs" and not MetadataSubset().active


def test_mask_is_vectorised_over_chunks() -> None:
    t = pa.concat_tables([_table(), _table()])
    assert MetadataSubset(countries={"include": ["Serbia"]}).mask(t).sum() == 2


@pytest.mark.parametrize(
    "data, error",
    [
        ({"countries": {"include": ["A"], "exclude": ["B"]}}, "exactly one of include or exclude"),
        ({"countries": {}}, "exactly one of include or exclude"),
        ({"countries": {"include": []}}, "at least 1"),
        ({"seasons": {"include": ["monsoon"]}}, "unknown season(s) ['monsoon']"),
        ({"regions": {"include": ["x"]}}, "Extra inputs are not permitted"),
        ({"countries": {"only": ["x"]}}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_subsets_are_refused(data: dict, error: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValidationError, match=error.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        MetadataSubset.model_validate(data)


def test_of_builds_from_cli_lists() -> None:
    s = MetadataSubset.of(countries=["Austria"], exclude_seasons=["winter"])
    assert s.countries is not None and s.countries.include == ["Austria"]
    assert s.seasons is not None and s.seasons.exclude == ["winter"]
    assert not MetadataSubset.of().active
    with pytest.raises(ValidationError, match="exactly one"):
        MetadataSubset.of(countries=["A"], exclude_countries=["B"])


def test_an_empty_selection_names_the_filter_the_split_and_the_values() -> None:
    t = _table()
    with pytest.raises(EmptySubsetError) as e:
        check_selected(MetadataSubset(countries={"include": ["Narnia"]}), "train", t)
    assert str(e.value) == (
        "data.countries include ['Narnia'] selects no pair of split 'train'; "
        "its countries: Austria (3), Portugal (2), Serbia (1), unknown (1)"
    )
    with pytest.raises(EmptySubsetError, match=r"its seasons: autumn \(1\), spring \(1\), summer \(1\)$"):
        check_selected(MetadataSubset(seasons={"include": ["winter"]}), "test", t.slice(1, 3))
    assert check_selected(MetadataSubset(countries={"include": ["Serbia"]}), "train", t).sum() == 1
    assert check_selected(MetadataSubset(), "train", t.slice(0, 0)).shape == (0,)


def test_group_keys_country_and_season_with_unknowns() -> None:
    keys = group_keys(["Austria", None, "Portugal"], [dt.datetime(2017, 1, 2), None, np.datetime64("2017-07-01T10:00")])
    assert keys == {"country": ["Austria", UNKNOWN, "Portugal"], "season": ["winter", UNKNOWN, "summer"]}
    t = _table()
    arrow = group_keys(t.column("country"), t.column("s2_acquisition"))
    assert arrow["season"] == ["winter", "spring", "summer", "autumn", "winter", "summer", UNKNOWN]
    assert group_keys([], []) == {"country": [], "season": []}
    with pytest.raises(ValueError, match="2 countries but 1 acquisitions"):
        group_keys(["a", "b"], [dt.datetime(2017, 1, 1)])


def test_by_group_counts_marks_and_computes_on_the_groups_rows() -> None:
    keys = ["b"] * MIN_GROUP_PAIRS + ["a"] * 3 + ["b"]
    values = np.arange(len(keys), dtype=float)
    out = by_group(keys, lambda idx: {"mean": float(values[idx].mean()), "first": int(idx[0])})
    assert list(out) == ["a", "b"]
    assert out["a"] == {"pairs": 3, "few_pairs": True, "mean": float(MIN_GROUP_PAIRS + 1), "first": MIN_GROUP_PAIRS}
    assert out["b"]["pairs"] == MIN_GROUP_PAIRS + 1 and out["b"]["few_pairs"] is False
    assert out["b"]["first"] == 0
    assert by_group([], lambda idx: {}) == {}


def test_a_country_no_pair_carries_is_named() -> None:
    t = _table()
    with pytest.raises(UnknownSubsetValueError) as e:  # a misspelt exclusion would keep everything
        check_selected(MetadataSubset.of(exclude_countries=["Portgual"]), "train", t)
    assert str(e.value) == (
        "data.countries exclude ['Portgual']: no pair of split 'train' has country 'Portgual'; "
        "its countries: Austria (3), Portugal (2), Serbia (1), unknown (1)"
    )
    # one misspelt name of two would select the other's pairs only
    with pytest.raises(UnknownSubsetValueError, match=r"has country 'Portgual', 'Narnia'; its countries: Austria"):
        check_selected(MetadataSubset.of(countries=["Austria", "Portgual", "Narnia"]), "test", t)
    assert not isinstance(UnknownSubsetValueError("x"), EmptySubsetError)
    assert check_selected(MetadataSubset.of(countries=["Austria", "Portgual"]), "t", t, values=False).sum() == 3
    # a valid season a split lacks is no typo: only an empty selection is an error
    assert check_selected(MetadataSubset.of(exclude_seasons=["winter"]), "test", t.slice(1, 3)).sum() == 3
    assert check_selected(MetadataSubset.of(seasons=["winter", "summer"]), "test", t.slice(1, 3)).sum() == 1
    check_values(MetadataSubset.of(exclude_countries=["Serbia"]), "train, validation", t)


def test_the_record_of_a_subset() -> None:
    assert subset_record(None) is None and subset_record(MetadataSubset()) is None
    both = MetadataSubset.of(exclude_countries=["Portugal"], seasons=["summer"])
    assert subset_record(both) == {"countries": {"exclude": ["Portugal"]}, "seasons": {"include": ["summer"]}}
    assert MetadataSubset.model_validate(subset_record(both)) == both  # reads back as the config spells it
