"""The shard set's rules (`bigearth.shards.shardset.ShardSet`) against small manifests written in a temporary folder:
typed entries, one split check, one label-column rule, manifests written before the typed entries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from bigearth.core.bands import ALL_BANDS
from bigearth.core.storage import open_fs
from bigearth.input.raydata import label_matrix
from bigearth.shards.format import MANIFEST, ROW_GROUP_PAIRS, Manifest, ShardEntry, ShardFormatError, ShardWriter
from bigearth.shards.shardset import ShardSet, UnknownSplit, label_column, nomenclature_of

#: manifest.json as ingests wrote it before the typed entries (the format on disk is unchanged).
OLD = {
    "format_version": "2",
    "pairs": 300,
    "splits": {"test": 20, "train": 270, "validation": 10},
    "shards": [
        {"path": "test/part-00000.parquet", "rows": 20, "split": "test"},
        {"path": "train/part-00000.parquet", "rows": 135, "split": "train"},
        {"path": "train/part-00001.parquet", "rows": 135, "split": "train"},
        {"path": "validation/part-00000.parquet", "rows": 10, "split": "validation"},
    ],
    "quarantined": [{"patch_id": "p", "kind": "missing_file", "reason": "missing file: x"}],
    "excluded": {"seasonal_snow": 3},
    "source": {"archive": "/a", "layout": "v2", "catalogue_pairs": 304},
}


def _write(root: Path, doc: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).write_text(json.dumps(doc, indent=1, sort_keys=True))
    return root


def _with_layout(layout: str | None) -> dict[str, Any]:
    source = {k: v for k, v in OLD["source"].items() if k != "layout"}
    return {**OLD, "source": source if layout is None else {**source, "layout": layout}}


def test_an_old_manifest_loads_as_typed_entries_and_saves_the_same_json(tmp_path: Path) -> None:
    root = _write(tmp_path / "set", OLD)
    shards = ShardSet.open(str(root))
    assert shards.entries[1] == ShardEntry(path="train/part-00000.parquet", split="train", rows=135)
    assert all(isinstance(e, ShardEntry) for e in shards.manifest.shards)
    assert shards.entries[1].row_groups == (ROW_GROUP_PAIRS, 135 - ROW_GROUP_PAIRS)
    assert ShardEntry("x", "test", 2 * ROW_GROUP_PAIRS).row_groups == (ROW_GROUP_PAIRS, ROW_GROUP_PAIRS)
    assert ShardEntry("x", "test", 0).row_groups == ()
    with pytest.raises(AttributeError):
        shards.entries[0].rows = 1  # type: ignore[misc]  # frozen
    (tmp_path / "again").mkdir()
    shards.manifest.save(*open_fs(str(tmp_path / "again")))
    assert json.loads((tmp_path / "again" / MANIFEST).read_text()) == OLD  # the format on disk is unchanged
    assert Manifest.load(*open_fs(str(tmp_path / "again"))) == shards.manifest


def test_a_malformed_entry_names_the_manifest(tmp_path: Path) -> None:
    root = _write(tmp_path, {**OLD, "shards": [{"path": "test/part-00000.parquet", "split": "test"}]})
    with pytest.raises(ShardFormatError, match=r"manifest.json: shard entry .* is not \{path, rows, split\}"):
        ShardSet.open(str(root))


def test_splits_files_and_paths(tmp_path: Path) -> None:
    root = _write(tmp_path, OLD)
    shards = ShardSet.open(str(root))
    assert shards.splits == {"test": 20, "train": 270, "validation": 10}
    assert [e.path for e in shards.files("train")] == ["train/part-00000.parquet", "train/part-00001.parquet"]
    assert [e.split for e in shards.files(["validation", "test"])] == ["test", "validation"]  # manifest order
    assert shards.files() == list(shards.entries)
    with pytest.raises(UnknownSplit, match=r"no shards for split \(none asked\); the shard set has \['test', "):
        shards.files([])
    assert shards.paths("test") == [f"{root}/test/part-00000.parquet"]


def test_an_unknown_split_names_it_and_the_splits_there_are(tmp_path: Path) -> None:
    shards = ShardSet.open(str(_write(tmp_path, OLD)))
    expected = r"no shards for split 'val'; the shard set has \['test', 'train', 'validation'\]"
    for asked in ("val", ["train", "val"]):
        with pytest.raises(UnknownSplit, match=str(tmp_path) + ": " + expected):
            shards.files(asked)
        with pytest.raises(ShardFormatError, match=expected):
            shards.paths(asked)
    with pytest.raises(KeyError):  # a lookup that failed: the service answers 422 with its text
        shards.files("nope")
    with pytest.raises(UnknownSplit, match=r"no shards for split 'a', 'b'"):
        shards.files(["b", "a", "test"])
    empty = ShardSet.open(str(_write(tmp_path / "empty", {**OLD, "pairs": 0, "splits": {}, "shards": []})))
    with pytest.raises(UnknownSplit, match=r"no shards for split \(any\); the shard set has \[\]"):
        empty.files()


def test_label_columns_and_nomenclatures(tmp_path: Path) -> None:
    assert (label_column(19), label_column(43)) == ("labels", "labels43")
    with pytest.raises(ValueError, match="nomenclature 20: expected 19 or 43"):
        label_column(20)
    assert nomenclature_of(["patch_id", "labels43"]) == 43 and nomenclature_of(["labels43", "labels"]) == 19
    with pytest.raises(ShardFormatError, match="no label column among"):
        nomenclature_of(["patch_id"])
    for layout, has_43 in (("v1", True), (None, True), ("v2", False)):
        shards = ShardSet.open(str(_write(tmp_path / str(layout), _with_layout(layout))))
        assert shards.layout == layout
        assert shards.supports(19) and shards.label_column(19) == "labels"
        assert shards.supports(43) == has_43
        if has_43:
            assert shards.label_column(43) == "labels43"
        else:
            with pytest.raises(ShardFormatError) as e:
                shards.label_column(43)
            assert str(e.value) == (
                f"{tmp_path / 'v2'}: nomenclature 43 asked, but the shard set was ingested from a v2 archive; 43-class "
                "labels exist only in shards ingested from a v1 archive (column labels43): ingest a v1 archive for "
                "them, or use nomenclature 19"
            )
        with pytest.raises(ValueError, match="nomenclature 7: expected 19 or 43"):
            shards.supports(7)


def _row(pid: str, split: str, labels43: list[str] | None) -> dict[str, Any]:
    return {
        "patch_id": pid,
        "s1_name": "S1",
        "split": split,
        "labels": ["Urban fabric"],
        "labels43": labels43,
        **{b.name: bytes(b.nbytes) for b in ALL_BANDS},
    }


def test_rows_without_43_class_labels_are_the_same_error(tmp_path: Path) -> None:
    """A manifest that does not say its layout is taken at its word; its rows are checked as read."""
    fs, root = open_fs(str(_write(tmp_path, {**_with_layout(None), "shards": [OLD["shards"][0]]})))
    (tmp_path / "test").mkdir()
    writer = ShardWriter(fs, f"{root}/test/part-00000.parquet")
    writer.write(_row("a", "test", ["Continuous urban fabric"]))
    writer.write(_row("b", "test", None))
    writer.close()
    shards = ShardSet.open(str(tmp_path))
    assert shards.label_column(43) == "labels43"
    table = pq.read_table(shards.paths("test")[0])
    assert label_matrix(table.slice(0, 1), 43).shape == (1, 43)
    with pytest.raises(
        ShardFormatError,
        match=r"shard rows: nomenclature 43 asked, but 1 row\(s\) have no labels43; "
        "43-class labels exist only in shards ingested from a v1 archive",
    ):
        label_matrix(table, 43)


def test_every_reader_asks_the_shard_set(shards_v2: Path) -> None:
    """An unknown split, and 43 classes of a v2 shard set, are the same error whichever reader is asked."""
    from bigearth.input.loader import row_groups
    from bigearth.input.raydata import open_split, read_columns
    from bigearth.input.torchdata import ShardDataset
    from bigearth.shards.patches import PatchStore

    unknown = f"{shards_v2}: no shards for split 'val'; the shard set has ['test', 'train', 'validation']"
    store = PatchStore(str(shards_v2))
    for ask in (
        lambda: open_split(str(shards_v2), "val"),
        lambda: read_columns(str(shards_v2), ["patch_id"], "val"),
        lambda: row_groups(str(shards_v2), "val"),
        lambda: ShardDataset(str(shards_v2), "val"),
        lambda: store.ids("val"),
    ):
        with pytest.raises(UnknownSplit) as e:
            ask()
        assert str(e.value) == unknown
    assert not ShardSet.open(str(shards_v2)).supports(43)
    no_43 = f"{shards_v2}: nomenclature 43 asked, but the shard set was ingested from a v2 archive; 43-class labels"
    for ask in (
        lambda: open_split(str(shards_v2), "train", nomenclature=43),
        lambda: ShardDataset(str(shards_v2), "train", nomenclature=43),
    ):
        with pytest.raises(ShardFormatError) as e:
            ask()
        assert str(e.value).startswith(no_43)


def test_two_writers_of_one_shard_never_interleave(tmp_path: Path) -> None:
    """A shard task run again while its first copy (a node cut off from the cluster, not from the volume) still
    writes: the file at the shard's path is one writer's whole, nothing is there before a close, and a writer that
    gives up (its task failed, or the other copy finished first) leaves neither its rows nor a temporary."""
    fs, root = open_fs(str(tmp_path))
    path = f"{root}/part-00000.parquet"
    first, again = ShardWriter(fs, path), ShardWriter(fs, path)
    for i in range(ROW_GROUP_PAIRS + 3):  # interleaved, a row group each flushed on the way
        first.write(_row(f"first-{i:04d}", "train", None))
        again.write(_row(f"again-{i:04d}", "train", None))
    assert not (tmp_path / "part-00000.parquet").exists()
    again.close()
    first.write(_row("first-late", "train", None))
    first.abort()
    ids = pq.read_table(path, columns=["patch_id"])["patch_id"].to_pylist()
    assert ids == [f"again-{i:04d}" for i in range(ROW_GROUP_PAIRS + 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.parquet"]  # no temporary left
    late = ShardWriter(fs, path)  # a writer that finishes replaces the file whole (a shard rewritten on resume)
    late.write(_row("late", "train", None))
    late.close()
    assert pq.read_table(path, columns=["patch_id"])["patch_id"].to_pylist() == ["late"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.parquet"]
