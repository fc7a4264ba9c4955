"""Ingest of the published metadata beside a few pairs' files (issue 24): what is present is listed once (a bounded
number of folder listings, no read of an absent pair), shards are planned from the pairs there, every pair of the
catalogue is accounted for exactly once, and the manifest stays small whatever the quarantine holds. In this process
(the local executor), through a real fsspec filesystem that counts what it is asked."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from bigearth.archive.catalogue import build_catalogue
from bigearth.archive.layouts import layout_for
from bigearth.archive.presence import FolderLister, find_present
from bigearth.core.storage import open_fs
from bigearth.ingest.job import IngestError
from bigearth.shards.format import MANIFEST, QUARANTINE, Manifest
from bigearth.synth.archive import synthesize
from helpers import LISTS_V2, ingest_in_process, quarantined

#: Pairs the metadata describes (the old ingest read 14 files of each and wrote a shard per 1,000 of them).
DESCRIBED = 30_000


class CountingFS(LocalFileSystem):
    """The local filesystem under `counted://`, recording every folder listed and every file asked about (opened,
    or looked up first: a request each on object storage)."""

    protocol = ("counted",)
    listed: ClassVar[list[str]] = []
    asked: ClassVar[list[str]] = []

    def ls(self, path: str, detail: bool = False, **kwargs: Any) -> Any:
        CountingFS.listed.append(self._strip_protocol(path))
        return super().ls(path, detail=detail, **kwargs)

    def info(self, path: str, **kwargs: Any) -> Any:
        CountingFS.asked.append(self._strip_protocol(path))
        return super().info(path, **kwargs)

    def isfile(self, path: str) -> bool:
        CountingFS.asked.append(self._strip_protocol(path))
        return bool(super().isfile(path))

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        CountingFS.asked.append(self._strip_protocol(path))
        return super()._open(path, mode=mode, **kwargs)


@pytest.fixture
def counted() -> Any:
    fsspec.register_implementation("counted", CountingFS, clobber=True)
    CountingFS.listed.clear()
    CountingFS.asked.clear()
    return CountingFS


@pytest.fixture(scope="module")
def partial_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 synthetic pairs with real ids, beside the real metadata cut to DESCRIBED pairs that include them (the
    snow/cloud file the synthesis wrote stays: its pairs are excluded by policy)."""
    root = tmp_path_factory.mktemp("partial") / "v2"
    real = LISTS_V2 / "metadata.parquet"
    synthesize(str(root), layout="v2", pairs=8, seed=11, metadata=str(real), progress=False, workers=1)
    here = pq.read_table(root / "metadata.parquet")["patch_id"]
    meta = pq.read_table(real)
    others = meta.filter(pc.invert(pc.is_in(meta["patch_id"], value_set=here)))
    described = pa.concat_tables([meta.filter(pc.is_in(meta["patch_id"], value_set=here)), others])
    pq.write_table(described.slice(0, DESCRIBED), root / "metadata.parquet")
    return root


def _present(root: Path) -> tuple[list[str], dict[str, str]]:
    """The S2 patch ids whose folders are there, and S1 name -> its folder."""
    s2 = sorted(p.name for p in (root / "BigEarthNet-S2").glob("*/*"))
    s1 = {p.name: str(p) for p in (root / "BigEarthNet-S1").glob("*/*")}
    return s2, s1


def test_the_full_metadata_beside_a_few_pairs(partial_v2: Path, tmp_path: Path, counted: Any) -> None:
    root = tmp_path / "v2"
    shutil.copytree(partial_v2, root)
    lay = layout_for("v2", str(root))
    meta = pq.read_table(root / "metadata.parquet").to_pylist()
    s2_ids, s1_dirs = _present(root)
    rows = {r["patch_id"]: r for r in meta if r["patch_id"] in s2_ids}
    no_s1, no_band = sorted(rows)[:2]
    shutil.rmtree(s1_dirs.pop(rows[no_s1]["s1_name"]))  # found by the listing
    os.remove(lay.s2_band(no_band, "B05"))  # its folder is there: found by the read, as before

    out = tmp_path / "shards"
    m = ingest_in_process(f"counted://{root}", out, shard_size=1000)  # type: ignore[arg-type]

    # listings: the root, the two top folders, and each tile / scene folder the catalogue needs that is there, once
    # each (the synthesis writes a folder per tile product or scene of its pairs); never a listing per pair
    cat = build_catalogue(str(root))
    needed = {os.path.dirname(lay.s2_dir(r["patch_id"])) for r in cat.pairs.to_pylist()}
    needed |= {os.path.dirname(lay.s1_dir(r["s1_name"])) for r in cat.pairs.to_pylist()}
    folders = {str(root), str(root / "BigEarthNet-S2"), str(root / "BigEarthNet-S1")} | {
        f for f in needed if os.path.isdir(f)
    }
    assert sorted(counted.listed) == sorted(folders) and len(folders) <= 3 + 2 * len(s2_ids)
    # reads: the files of the pairs that are there (14 each, looked up and opened), nothing of the others
    there = [lay.s2_dir(p) for p in rows] + list(s1_dirs.values())
    files = [f for f in counted.asked if f.endswith(".tif")]
    assert all(any(f.startswith(d + "/") for d in there) for f in files) and len(set(files)) <= 14 * len(rows)

    # one shard per split, of the pairs there; every pair of the catalogue accounted for exactly once
    written = [r for s in m.shards for r in pq.read_table(out / s.path, columns=["patch_id"])["patch_id"].to_pylist()]
    assert len(m.shards) == len(m.splits) and m.pairs == len(written) == len(rows) - 2
    assert all(s.rows == m.splits[s.split] for s in m.shards)
    q = {x["patch_id"]: x for x in quarantined(out)}
    excluded = pq.read_table(out / "_ingest" / "excluded.parquet")["patch_id"].to_pylist()
    catalogue = [r["patch_id"] for r in meta] + pq.read_table(
        root / "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
    )["patch_id"].to_pylist()
    assert sorted(written + list(q) + excluded) == sorted(catalogue) == sorted(set(catalogue))
    assert m.pairs + m.quarantined_pairs + sum(m.excluded.values()) == m.source["catalogue_pairs"] == len(catalogue)

    # the quarantine: every absent pair named with what is absent, the damaged one as the read found it
    assert m.quarantine_kinds == {"missing_file": DESCRIBED - len(rows) + 1, "missing_s1": 1}
    vv, vh = (lay.s1_band(rows[no_s1]["s1_name"], b) for b in ("VV", "VH"))
    assert q[no_s1]["kind"] == "missing_s1"
    assert q[no_s1]["reason"].startswith(f"missing S1 partner {rows[no_s1]['s1_name']}: neither {vv} nor {vh} exists")
    assert q[no_band] == {
        "patch_id": no_band,
        "kind": "missing_file",
        "reason": f"missing file: {lay.s2_band(no_band, 'B05')}",
    }
    absent = next(r["patch_id"] for r in meta if r["patch_id"] not in rows)
    assert q[absent] == {"patch_id": absent, "kind": "missing_file", "reason": f"missing folder: {lay.s2_dir(absent)}"}
    assert list(q) == sorted(q)  # by patch id

    # the manifest every reader parses counts the quarantine and names its file: small whatever it holds
    assert (out / MANIFEST).stat().st_size < 20_000 and (out / QUARANTINE).exists()
    doc = json.loads((out / MANIFEST).read_text())
    assert "quarantined" not in doc and doc["source"]["quarantine"]["file"] == QUARANTINE
    assert doc["source"]["quarantine"]["pairs"] == len(q) == DESCRIBED - (len(rows) - 2)

    # a re-run resumes: the same plan, nothing rewritten, the same accounting
    before = {p: p.stat().st_mtime_ns for p in out.rglob("part-*.parquet")}
    again = ingest_in_process(f"counted://{root}", out, shard_size=1000)  # type: ignore[arg-type]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("part-*.parquet")} == before
    assert (again.pairs, again.quarantine_kinds) == (m.pairs, m.quarantine_kinds) and quarantined(out) == list(
        q.values()
    )


def test_the_full_metadata_beside_partial_downloads_writes_a_shard_per_split(tmp_path: Path) -> None:
    """The same case from the published downloads: nothing can be listed (a tar is read to its end), so every
    described pair is planned; staging counts what each planned shard's pairs have in the downloads, and sparse
    planned shards are packed into one file per `shard_size` pairs present instead of one each."""
    root = tmp_path / "downloads"
    real = LISTS_V2 / "metadata.parquet"
    synthesize(str(root), layout="v2", pairs=8, seed=11, metadata=str(real), progress=False, workers=1, packed=True)
    here = pq.read_table(root / "metadata.parquet")["patch_id"]
    meta = pq.read_table(real)
    others = meta.filter(pc.invert(pc.is_in(meta["patch_id"], value_set=here)))
    described = pa.concat_tables([meta.filter(pc.is_in(meta["patch_id"], value_set=here)), others]).slice(0, 3000)
    pq.write_table(described, root / "metadata.parquet")

    out = tmp_path / "shards"
    m = ingest_in_process(root, out, shard_size=100, trust_md5sums=True)
    planned = json.loads((out / "_ingest" / "plan.json").read_text())["shards"]
    packing = json.loads((out / "_ingest" / "groups.json").read_text())
    assert planned >= 25 and packing["shards"] == planned  # ~2,900 described pairs in shards of 100
    assert len(m.shards) == len(packing["groups"]) == len(m.splits)  # the pairs there fit one shard per split
    written = [r for s in m.shards for r in pq.read_table(out / s.path, columns=["patch_id"])["patch_id"].to_pylist()]
    assert sorted(written) == sorted(set(written)) and m.pairs == len(written) > 0
    assert all(s.rows == m.splits[s.split] for s in m.shards)
    q = [x["patch_id"] for x in quarantined(out)]
    excluded = pq.read_table(out / "_ingest" / "excluded.parquet")["patch_id"].to_pylist()
    catalogue = (
        described["patch_id"].to_pylist()
        + pq.read_table(root / "metadata_for_patches_with_snow_cloud_or_shadow.parquet")["patch_id"].to_pylist()
    )
    assert sorted(written + q + excluded) == sorted(catalogue) == sorted(set(catalogue))  # each pair once
    assert set(m.quarantine_kinds) == {"missing_file"}

    # killed before its last shard: the re-run stages again for that shard alone, packed as the first run packed
    last = sorted(m.shards, key=lambda s: s.path)[-1]
    (out / "_ingest" / "reports" / last.path.replace(".parquet", ".json")).unlink()
    (out / last.path).unlink()
    (out / MANIFEST).unlink()
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("part-*.parquet")}
    again = ingest_in_process(root, out, shard_size=100, trust_md5sums=True)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("part-*.parquet") if p in kept} == kept
    assert sorted(s.path for s in again.shards) == sorted(s.path for s in m.shards) and again.pairs == m.pairs
    assert (again.quarantined_pairs, again.quarantine_kinds) == (m.quarantined_pairs, m.quarantine_kinds)

    # the packing is state read back: one that does not cover the plan once is refused, naming its file
    for bad in ([[0], [0]], [[1], [0]], [list(range(planned))]):  # twice; out of order; across splits
        (out / "_ingest" / "groups.json").write_text(json.dumps({"shards": planned, "groups": bad}))
        with pytest.raises(IngestError, match=r"groups\.json: expected the packing of the \d+ planned shards"):
            ingest_in_process(root, out, shard_size=100, trust_md5sums=True)
    (out / "_ingest" / "groups.json").write_text('{"shards": 3')  # cut short
    with pytest.raises(IngestError, match=r"groups\.json.*pass --overwrite"):
        ingest_in_process(root, out, shard_size=100, trust_md5sums=True)


def test_planned_shards_are_packed_by_the_pairs_the_downloads_hold() -> None:
    from bigearth.ingest.downloads import pack_buckets

    splits = ["test"] * 3 + ["train"] * 4
    full = {str(i): 90 for i in range(7)}
    # a complete archive: one shard per planned shard, as before
    assert pack_buckets(splits, [{"kind": "s2", "buckets": full}, {"kind": "s1", "buckets": full}], 100) == [
        [i] for i in range(7)
    ]
    # a part of it: per bucket the more of S2 and S1 staged (what its task loads); consecutive buckets of one split
    # while they fit; splits apart; reference maps not counted
    s2 = {"kind": "s2", "buckets": {"0": 10, "1": 5, "2": 90, "3": 0, "4": 30, "5": 40, "6": 50}}
    s1 = {"kind": "s1", "buckets": {"0": 8, "1": 5, "2": 85, "4": 30, "5": 40, "6": 50}}
    maps = {"kind": "reference_maps", "buckets": {"0": 1000}}
    assert pack_buckets(splits, [s2, s1, maps], 100) == [[0, 1], [2], [3, 4, 5], [6]]
    # a required download missing or cut short: packed by what the other holds, never past shard_size loaded
    gone = {"kind": "s1", "buckets": {}, "missing": True}
    assert pack_buckets(splits, [{"kind": "s2", "buckets": full}, gone], 100) == [[i] for i in range(7)]
    assert pack_buckets(splits, [s2, gone], 100) == [[0, 1], [2], [3, 4, 5], [6]]
    # staging records from before the counts (a resumed older ingest), one or all: nothing packed
    assert pack_buckets(splits, [s2, {"kind": "s1"}], 100) == [[i] for i in range(7)]
    assert pack_buckets(splits, [s2, {"download": "BigEarthNet-S1.tar.zst", "spills": []}], 100) == [
        [i] for i in range(7)
    ]


def test_v1_folders_absent_are_quarantined_without_a_read(synth_v1: Path, archive_copy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = archive_copy(synth_v1)
    lay = layout_for("v1", str(root))
    (a, _a1), (b, _b1) = (line.split(",") for line in (root / "lists" / "train.csv").read_text().splitlines()[:2])
    shutil.rmtree(lay.s2_dir(a))
    shutil.rmtree(lay.s1_dir(_b1))
    m = ingest_in_process(root, tmp_path / "out", lists=str(root / "lists"), shard_size=50)
    q = {x["patch_id"]: (x["kind"], x["reason"]) for x in quarantined(tmp_path / "out")}
    assert q[a] == ("missing_file", f"missing folder: {lay.s2_dir(a)}")
    assert q[b][0] == "missing_s1" and q[b][1].startswith(f"missing S1 partner {_b1}: neither ")
    assert len(q) == m.quarantined_pairs == 2 and m.pairs + 2 + sum(m.excluded.values()) == 120


def test_folders_are_those_of_each_pair() -> None:
    """`folders` (a whole column at once) gives the folders `s2_dir` / `s1_dir` give pair by pair, on real v2 ids;
    null for a name the layout cannot place or no partner."""
    meta = pq.read_table(LISTS_V2 / "metadata.parquet").slice(0, 5000).select(["patch_id", "s1_name"])
    bad = pa.table({"patch_id": ["not_a_patch", "S2A_MSIL2A_20170613T101031_87_48"], "s1_name": [None, "nope"]})
    v2 = layout_for("v2", "/archive")
    s2, s1 = v2.folders(pa.concat_tables([meta, bad]))
    rows = meta.to_pylist()
    assert s2.to_pylist()[: len(rows)] == [v2.s2_dir(r["patch_id"]) for r in rows]
    assert s1.to_pylist()[: len(rows)] == [v2.s1_dir(r["s1_name"]) for r in rows]
    assert s2.to_pylist()[len(rows) :] == [None, v2.s2_dir("S2A_MSIL2A_20170613T101031_87_48")]
    assert s1.to_pylist()[len(rows) :] == [None, None]
    v1 = layout_for("v1", "/archive")
    ids = ["S2A_MSIL2A_20170613T101031_87_48", "S2B_MSIL2A_20170924T93020_69_24"]
    s1_names = ["S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48", ""]
    s2, s1 = v1.folders(pa.table({"patch_id": ids, "s1_name": s1_names}))
    assert s2.to_pylist() == [v1.s2_dir(i) for i in ids] and s1.to_pylist() == [v1.s1_dir(s1_names[0]), None]


def test_each_folder_is_listed_once(tmp_path: Path, counted: Any) -> None:
    for folder in ("top/a/x", "top/a/y", "top/b/z", "other/c"):
        (tmp_path / folder).mkdir(parents=True)
    fs, root = open_fs(f"counted://{tmp_path}")
    lister = FolderLister(fs, root)
    paths = [f"{root}/top/a/x", f"{root}/top/a/y", f"{root}/top/b/w", f"{root}/top/n/v", f"{root}/gone/p/q", None]
    assert lister.absent(pa.chunked_array([paths], pa.string())).to_pylist() == [False, False, True, True, True, False]
    assert lister.absent(pa.chunked_array([[f"{root}/top/b/z", f"{root}/top/a/q"]])).to_pylist() == [False, True]
    assert sorted(counted.listed) == sorted([root, f"{root}/top", f"{root}/top/a", f"{root}/top/b"])
    assert lister.listings == 4  # `top/n` and `gone` are absent from their parents' listings: never listed


def test_an_archive_over_http_is_not_listed(synth_v2: Path) -> None:
    cat = build_catalogue(str(synth_v2))
    fs = fsspec.filesystem("http")
    assert find_present(fs, cat.layout, cat.pairs) is None  # a server's index page is not a listing: every pair is read


def test_old_manifests_keep_their_quarantine_and_new_ones_stay_small(tmp_path: Path) -> None:
    fs, root = open_fs(str(tmp_path))
    old = Manifest(
        pairs=2,
        quarantined=[{"patch_id": "p", "kind": "missing_file", "reason": "missing file: x"}],
        source={"reference_maps": {"rows": 1, "missing": ["r"]}},
    )
    assert old.quarantined_pairs == 1 and old.quarantine_kinds == {"missing_file": 1}
    assert old.quarantine_table(fs, root).to_pylist() == old.quarantined
    assert old.reference_maps_missing(fs, root) == ["r"]
    assert "quarantined" in json.loads(old.to_json())  # written back as it was read
    sizes = []
    for n in (10, 100_000):
        m = Manifest(pairs=1, source={"quarantine": {"pairs": n, "kinds": {"missing_file": n}, "file": QUARANTINE}})
        sizes.append(len(m.to_json()))
        assert m.quarantined_pairs == n and "quarantined" not in json.loads(m.to_json())
    assert sizes[1] - sizes[0] == 2 * 4 and sizes[1] < 2_000  # the digits of the counts, nothing more
