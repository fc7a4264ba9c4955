"""The published metadata of both archives, read into one catalogue table (one row per pair).

v2: `metadata.parquet` (+ `metadata_for_patches_with_snow_cloud_or_shadow.parquet` when present) carries ids,
S1 partners, 19-class labels, splits, countries and snow/cloud flags.
v1: the official lists (`s1_s2_mapping.csv`, `train/val/test.csv`, snow / cloud / no-19-label lists) carry ids,
partners, splits and flags; the labels are in each patch's JSON and are read during ingest.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from bigearth.archive.names import parse_s1
from bigearth.core.storage import StorageOptions, join, open_fs

SPLITS = ("train", "validation", "test")
#: Exclusion reasons, in the order they are attributed when a patch has several.
EXCLUSION_REASONS = ("seasonal_snow", "cloud_or_shadow", "no_19_class_label")

V2_METADATA = "metadata.parquet"
V2_SNOW_CLOUD_METADATA = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"

CATALOGUE_SCHEMA = pa.schema(
    [
        ("patch_id", pa.string()),
        ("s1_name", pa.string()),
        ("split", pa.string()),  # train / validation / test; null for v1 patches outside the official splits
        ("labels", pa.list_(pa.string())),  # 19-class names (v2); null for v1, whose labels are in the JSON
        ("country", pa.string()),
        ("tile", pa.string()),
        ("contains_seasonal_snow", pa.bool_()),
        ("contains_cloud_or_shadow", pa.bool_()),
        ("no_19_class_label", pa.bool_()),
    ]
)

V1_LISTS = {
    "mapping": "s1_s2_mapping.csv",
    "train": "train.csv",
    "validation": "val.csv",
    "test": "test.csv",
    "seasonal_snow": "patches_with_seasonal_snow.csv",
    "cloud_or_shadow": "patches_with_cloud_and_shadow.csv",
    "no_19_class_label": "patches_with_no_19_class_targets.csv",
}
V1_LISTS_HELP = """\
BigEarthNet v1 needs the official lists, passed with --lists DIR (each file may also be .bz2-compressed):
  s1_s2_mapping.csv                        S1<->S2 pairs, header s1_name,s2_name (bigearthnet_common)
  train.csv, val.csv, test.csv             official BigEarthNet-MM 19-class splits (S2name,S1name, no header):
      https://git.tu-berlin.de/rsim/BigEarthNet-MM_19-classes_models/-/tree/master/splits
  patches_with_seasonal_snow.csv           http://bigearth.net/static/documents/patches_with_seasonal_snow.csv
  patches_with_cloud_and_shadow.csv        http://bigearth.net/static/documents/patches_with_cloud_and_shadow.csv
  patches_with_no_19_class_targets.csv     bigearthnet_common (src/bigearthnet_common/*.csv.bz2)"""


class ArchiveError(ValueError):
    """The archive or its metadata is missing or not in the expected form."""


# --------------------------------------------------------------------------------------------------- v2
def read_v2_metadata(fs: AbstractFileSystem, path: str) -> pa.Table:
    """The published columns of one v2 metadata parquet (read whole: works over plain HTTP too; the columns the
    catalogue does not use are not decoded)."""
    f = pq.ParquetFile(pa.BufferReader(fs.cat_file(path)))
    need = ["patch_id", "labels", "split", "country", "s1_name", "contains_seasonal_snow", "contains_cloud_or_shadow"]
    missing = set(need) - set(f.schema_arrow.names)
    if missing:
        raise ArchiveError(f"{path}: missing column(s) {sorted(missing)}; expected the published v2 metadata schema")
    # a row group at a time, in this thread: the same table, at about 3/4 of the peak memory of one threaded read
    groups = [f.read_row_group(i, columns=need, use_threads=False) for i in range(f.num_row_groups)]
    t = pa.concat_tables(groups) if groups else f.schema_arrow.empty_table().select(need)
    bad = set(pc.unique(t["split"]).to_pylist()) - set(SPLITS)
    if bad:
        raise ArchiveError(f"{path}: unexpected split value(s) {sorted(map(str, bad))}; expected {SPLITS}")
    return t


def v2_table(fs: AbstractFileSystem, root: str) -> pa.Table:
    """The catalogue rows of a v2 archive root (extracted or downloaded: the metadata files are the same)."""
    main = join(root, V2_METADATA)
    if not fs.exists(main):
        raise ArchiveError(
            f"{main} not found: a v2.0 archive root holds metadata.parquet (Zenodo 10.5281/zenodo.10891137)"
        )
    parts = [read_v2_metadata(fs, main)]
    extra = join(root, V2_SNOW_CLOUD_METADATA)
    if fs.exists(extra):
        parts.append(read_v2_metadata(fs, extra))
    rows = []
    for t in parts:
        labels = t["labels"].cast(pa.list_(pa.string()))  # Arrow to Arrow: no Python list per pair
        rows.append(
            pa.table(
                {
                    "patch_id": t["patch_id"].cast(pa.string()),
                    "s1_name": t["s1_name"].cast(pa.string()),
                    "split": t["split"].cast(pa.string()),
                    "labels": labels,
                    "country": t["country"].cast(pa.string()),
                    "tile": pc.struct_field(pc.extract_regex(t["patch_id"], r"_T(?P<t>\w{5})_\d+_\d+$"), [0]),
                    "contains_seasonal_snow": t["contains_seasonal_snow"].cast(pa.bool_()),
                    "contains_cloud_or_shadow": t["contains_cloud_or_shadow"].cast(pa.bool_()),
                    "no_19_class_label": pc.equal(pc.list_value_length(labels), 0),
                },
                schema=CATALOGUE_SCHEMA,
            )
        )
    return pa.concat_tables(rows)


# --------------------------------------------------------------------------------------------------- v1
def _open_list(fs: AbstractFileSystem, root: str, name: str) -> bytes:
    for candidate, compression in ((name, None), (name + ".bz2", "bz2")):
        path = join(root, candidate)
        if fs.exists(path):
            with fs.open(path, "rb", compression=compression) as f:
                data: bytes = f.read()
                return data
    raise ArchiveError(f"{join(root, name)}(.bz2) not found.\n{V1_LISTS_HELP}")


def _read_names(data: bytes) -> list[str]:
    return [line.strip() for line in data.decode().splitlines() if line.strip()]


def _read_pairs_csv(data: bytes, columns: list[str]) -> pa.Table:
    opts = pacsv.ReadOptions(column_names=columns)
    return pacsv.read_csv(io.BytesIO(data), read_options=opts)


def read_v1_lists(lists: str, storage: StorageOptions | None = None) -> dict[str, object]:
    """The official v1 lists as Python objects: mapping and splits as tables, flag lists as sets of S2 names."""
    fs, root = open_fs(lists, storage)
    out: dict[str, object] = {}
    mapping = pacsv.read_csv(io.BytesIO(_open_list(fs, root, V1_LISTS["mapping"])))
    if mapping.column_names != ["s1_name", "s2_name"]:
        raise ArchiveError(
            f"{join(root, V1_LISTS['mapping'])}: expected header s1_name,s2_name, got {','.join(mapping.column_names)}"
        )
    out["mapping"] = mapping
    for split in SPLITS:
        out[split] = _read_pairs_csv(_open_list(fs, root, V1_LISTS[split]), ["s2_name", "s1_name"])
    for flag in EXCLUSION_REASONS:
        out[flag] = set(_read_names(_open_list(fs, root, V1_LISTS[flag])))
    return out


def v1_table(archive: str, lists: str | None, storage: StorageOptions | None) -> pa.Table:
    """The catalogue rows of a v1 archive (extracted or downloaded), from the official lists."""
    if lists is None:
        raise ArchiveError(f"{archive}: a v1.0 archive needs --lists.\n{V1_LISTS_HELP}")
    data = read_v1_lists(lists, storage)
    mapping: pa.Table = data["mapping"]  # type: ignore[assignment]
    split_of: dict[str, str] = {}
    for split in SPLITS:
        for s2 in data[split]["s2_name"].to_pylist():  # type: ignore[index]
            split_of[s2] = split
    s2 = mapping["s2_name"].to_pylist()
    s1 = mapping["s1_name"].to_pylist()
    snow, cloud, no19 = (data[r] for r in EXCLUSION_REASONS)
    tiles: list[str | None] = []
    for name in s1:
        try:
            tiles.append(parse_s1(name).tile)
        except ValueError:
            tiles.append(None)
    return pa.table(
        {
            "patch_id": pa.array(s2, pa.string()),
            "s1_name": pa.array(s1, pa.string()),
            "split": pa.array([split_of.get(n) for n in s2], pa.string()),
            "labels": pa.nulls(len(s2), pa.list_(pa.string())),
            "country": pa.nulls(len(s2), pa.string()),
            "tile": pa.array(tiles, pa.string()),
            "contains_seasonal_snow": pa.array([n in snow for n in s2]),  # type: ignore[operator]
            "contains_cloud_or_shadow": pa.array([n in cloud for n in s2]),  # type: ignore[operator]
            "no_19_class_label": pa.array([n in no19 for n in s2]),  # type: ignore[operator]
        },
        schema=CATALOGUE_SCHEMA,
    )
