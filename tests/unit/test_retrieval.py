"""The two index engines against one contract: the embedded engine (qdrant-edge) and qdrant-client (local mode,
the same client code path as a Qdrant server), in this process (a rebuild killed in another process:
tests/integration/test_retrieval.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from bigearth.retrieval import SearchFilter, VectorIndex, VectorIndexError, open_index, point_id
from bigearth.retrieval.schema import centres_lonlat, flags, season

N, DIM = 300, 32
COUNTRIES = ["Austria", "Finland", "Portugal"]
LABELS = ["Urban fabric", "Arable land", "Coniferous forest", "Inland waters"]


def _corpus(seed: int = 0) -> tuple[list[str], dict[str, np.ndarray], list[dict]]:  # type: ignore[type-arg]
    rng = np.random.default_rng(seed)
    ids = [f"S2A_MSIL2A_20170613T101031_{i}_{i % 7}" for i in range(N)]
    vectors = {"fused": rng.normal(size=(N, DIM)).astype(np.float32), "s1": rng.normal(size=(N, 4)).astype(np.float32)}
    payloads = [
        {
            "patch_id": pid,
            "labels": [LABELS[i % 4]] + ([LABELS[(i + 1) % 4]] if i % 3 == 0 else []),
            "split": ["train", "validation", "test"][i % 3],
            "country": COUNTRIES[(i // 3) % 3],
            "tile": "33UUP",
            "date": f"2017-{1 + i % 12:02d}-15T10:00:00Z",
            "season": season(1 + i % 12),
            "location": {"lat": 48.0 + (i % 10) * 0.1, "lon": 14.0},
            "snow": i % 11 == 0,
            "cloud": False,
        }
        for i, pid in enumerate(ids)
    ]
    for p in payloads:
        p["flags"] = flags(p)
    return ids, vectors, payloads


@pytest.fixture(params=["edge", "qdrant-local"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorIndex]:
    target = str(tmp_path / "index") if request.param == "edge" else f"qdrant-local:{tmp_path / 'qdrant'}"
    idx = open_index(target, "test")
    ids, vectors, payloads = _corpus()
    idx.create({"fused": DIM, "s1": 4}, {"model": "unit"})
    for i in range(0, N, 128):
        idx.upsert(ids[i : i + 128], {k: v[i : i + 128] for k, v in vectors.items()}, payloads[i : i + 128])
    idx.finish()
    yield idx
    idx.close()


def _exact(vectors: np.ndarray, q: np.ndarray, keep: np.ndarray, k: int) -> list[int]:
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = v @ (q / np.linalg.norm(q))
    scores[~keep] = -np.inf
    return [int(i) for i in np.argsort(-scores)[:k] if keep[i]]


def test_nearest_neighbours_match_exact_cosine(index: VectorIndex) -> None:
    ids, vectors, _ = _corpus()
    q = vectors["fused"][17]
    hits = index.search(q, "fused", k=5, exact=True)
    assert [h.patch_id for h in hits] == [ids[i] for i in _exact(vectors["fused"], q, np.ones(N, bool), 5)]
    assert hits[0].patch_id == ids[17] and hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert hits[0].payload["country"] == COUNTRIES[(17 // 3) % 3]


def test_filters(index: VectorIndex) -> None:
    ids, vectors, payloads = _corpus()
    q = vectors["fused"][3]
    cases = {
        "labels_any": (SearchFilter(labels_any=["Inland waters"]), lambda p: "Inland waters" in p["labels"]),
        "labels_all": (
            SearchFilter(labels_all=["Urban fabric", "Arable land"]),
            lambda p: {"Urban fabric", "Arable land"} <= set(p["labels"]),
        ),
        "split+country": (
            SearchFilter(split="train", country=["Finland", "Portugal"]),
            lambda p: p["split"] == "train" and p["country"] in ("Finland", "Portugal"),
        ),
        "dates": (
            SearchFilter(date_from="2017-03-01", date_to="2017-05-31"),
            lambda p: "2017-03" <= p["date"][:7] <= "2017-05",
        ),
        "season+snow": (SearchFilter(season="winter", snow=False), lambda p: p["season"] == "winter" and not p["snow"]),
        "snow": (SearchFilter(snow=True), lambda p: p["snow"]),
        "near": (SearchFilter(near={"lat": 48.0, "lon": 14.0, "radius_km": 5}), lambda p: p["location"]["lat"] < 48.05),
    }
    for name, (flt, pred) in cases.items():
        keep = np.array([pred(p) for p in payloads])
        assert keep.any() and not keep.all(), name
        assert index.count(flt) == int(keep.sum()), name
        hits = index.search(q, "fused", k=8, flt=flt, exact=True)
        assert [h.patch_id for h in hits] == [ids[i] for i in _exact(vectors["fused"], q, keep, 8)], name


def test_exclude_and_named_vectors(index: VectorIndex) -> None:
    ids, vectors, _ = _corpus()
    hits = index.search(vectors["s1"][5], "s1", k=3, exclude=[ids[5]], exact=True)
    assert ids[5] not in [h.patch_id for h in hits] and len(hits) == 3
    with pytest.raises(VectorIndexError, match="no 's2' vectors; it has \\['fused', 's1'\\]"):
        index.search(vectors["s1"][5], "s2")
    with pytest.raises(ValueError, match="expected 4 finite numbers for 's1', got 32"):
        index.search(vectors["fused"][5], "s1")


def test_retrieve_by_patch_id_with_vectors(index: VectorIndex) -> None:
    ids, vectors, payloads = _corpus()
    got = index.retrieve([ids[2], ids[9], "S2A_MSIL2A_20170613T101031_unknown_1"], with_vectors=True)
    assert set(got) == {ids[2], ids[9]}
    assert got[ids[9]].payload == payloads[9]
    v = np.asarray(got[ids[9]].vectors["s1"])
    cos = v @ vectors["s1"][9] / np.linalg.norm(v) / np.linalg.norm(vectors["s1"][9])
    assert cos == pytest.approx(1.0, abs=1e-4)


def test_reindex_updates_instead_of_duplicating(index: VectorIndex) -> None:
    ids, vectors, payloads = _corpus(seed=1)
    changed = [dict(p, country="Ireland") for p in payloads[:50]]
    index.create({"fused": DIM, "s1": 4}, {"model": "unit"})  # same vectors: kept, not recreated
    index.upsert(ids[:50], {k: v[:50] for k, v in vectors.items()}, changed)
    index.finish()
    assert index.count() == N
    assert index.count(SearchFilter(country="Ireland")) == 50
    assert index.metadata()["model"] == "unit" and index.metadata()["vectors"] == {"fused": DIM, "s1": 4}


def test_a_different_model_cannot_silently_reuse_a_collection(index: VectorIndex) -> None:
    with pytest.raises(VectorIndexError, match=r"holds vectors .* this model gives"):
        index.create({"fused": 64}, {"model": "other"})
    with pytest.raises(VectorIndexError, match=r"was filled from something else \(model 'unit' there, 'other' asked\)"):
        index.create({"fused": DIM, "s1": 4}, {"model": "other"})  # the same sizes: still another model's points
    index.create({"fused": 64}, {"model": "other"}, recreate=True)
    assert index.count() == 0 and index.metadata()["vectors"] == {"fused": 64}


def test_upserts_to_a_busy_qdrant_are_tried_again_then_fail_with_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    idx = open_index("qdrant-local::memory:", "test")
    idx.create({"fused": DIM}, {"model": "unit"})
    ids, vectors, payloads = _corpus()
    upsert, calls = idx.client.upsert, []  # type: ignore[attr-defined]

    def flaky(*args: object, **kwargs: object) -> object:
        calls.append(time.monotonic())
        if len(calls) in (1, 2, 4, 5, 6, 7):
            raise TimeoutError(f"timed out ({len(calls)})")
        return upsert(*args, **kwargs)

    monkeypatch.setattr(idx.client, "upsert", flaky)  # type: ignore[attr-defined]
    idx.upsert(ids[:3], {"fused": vectors["fused"][:3]}, payloads[:3])
    assert len(calls) == 3 and idx.count() == 3
    assert 0.5 <= calls[1] - calls[0] < 0.9 and 1.0 <= calls[2] - calls[1] < 1.5  # backoff
    with pytest.raises(TimeoutError, match=r"timed out \(7\)"):  # 4 tries, then the last error
        idx.upsert(ids[3:6], {"fused": vectors["fused"][3:6]}, payloads[3:6])
    assert len(calls) == 7 and idx.count() == 3
    idx.close()


def test_missing_collection_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(VectorIndexError, match=r"no such collection .* run jobs/index.py first"):
        open_index(str(tmp_path), "nothing").count()


def test_point_ids_are_stable_uuid5() -> None:
    assert point_id("S2A_MSIL2A_20170613T101031_87_48") == point_id("S2A_MSIL2A_20170613T101031_87_48")
    assert point_id("a") != point_id("b") and len(point_id("a")) == 36


def test_filter_validation_names_the_field() -> None:
    with pytest.raises(ValidationError, match="labels_any"):
        SearchFilter(labels_any=["Moon base"])
    with pytest.raises(ValidationError, match=r"date_from .* is after date_to"):
        SearchFilter(date_from="2018-01-01", date_to="2017-01-01")
    with pytest.raises(ValidationError, match="split"):
        SearchFilter(split="holdout")
    with pytest.raises(ValidationError, match="colour"):
        SearchFilter.model_validate({"colour": "red"})


def test_patch_centres_from_utm_corners() -> None:
    # Patch 87_48 of tile 33UUP (FACTS.md): UL corner 404400 E, 5342400 N in EPSG:32633 -> near Linz, Austria.
    lon, lat = centres_lonlat(np.array([32633]), np.array([404400.0]), np.array([5342400.0]))
    assert 13.6 < lon[0] < 13.8 and 48.1 < lat[0] < 48.3


@pytest.mark.parametrize("engine", ["edge", "qdrant-local"])
@pytest.mark.parametrize("quantization", ["none", "int8", "binary"])
def test_quantized_indexes_rescore_to_the_exact_neighbours(engine: str, quantization: str, tmp_path: Path) -> None:
    """Both engines quantize the same vectors (over 64 dims; a 19-d one never) and rescore with the full ones."""
    import dataclasses

    from bigearth.retrieval import IndexSettings
    from bigearth.retrieval.backends import quantization_for

    settings = IndexSettings(quantization=quantization, oversampling=4.0, indexing_threshold_kb=1)  # index it all
    assert quantization_for(settings, 19) is None and quantization_for(settings, 128) == (
        None if quantization == "none" else quantization
    )
    target = str(tmp_path / "index") if engine == "edge" else f"qdrant-local:{tmp_path / 'qdrant'}"
    idx = open_index(target, "q", settings=settings)
    rng = np.random.default_rng(3)
    ids, _, payloads = _corpus()
    centres = rng.normal(size=(10, 128))
    big = (centres[np.arange(N) % 10] + 0.3 * rng.normal(size=(N, 128))).astype(np.float32)
    idx.create({"fused": 128, "s1": 19}, {"model": "unit"})
    idx.upsert(ids, {"fused": big, "s1": rng.normal(size=(N, 19)).astype(np.float32)}, payloads)
    idx.finish()
    try:
        if engine == "qdrant-local":  # what a Qdrant server is asked to store (local mode itself is exact)
            params = idx.client.get_collection("q").config.params.vectors  # type: ignore[attr-defined]
            assert params["s1"].quantization_config is None
            assert (params["fused"].quantization_config is None) == (quantization == "none")
        else:  # the engine indexed the segment, so its searches go through the quantized copy
            assert idx.shard.info().indexed_vectors_count >= N  # type: ignore[attr-defined]
            idx.settings = dataclasses.replace(settings, rescore=False)
            raw = [idx.search(big[j], "fused", k=1)[0].score for j in range(0, N, 7)]
            exact_self = [1.0] * len(raw)  # cosine of a vector with itself
            quantized_scores_differ = not np.allclose(raw, exact_self, atol=1e-5)
            assert quantized_scores_differ == (quantization != "none"), raw[:3]
            idx.settings = settings
        recall = []
        for j in range(0, N, 7):
            hits = idx.search(big[j], "fused", k=5)
            exact = [ids[i] for i in _exact(big, big[j], np.ones(N, bool), 5)]
            assert hits[0].patch_id == ids[j] and hits[0].score == pytest.approx(1.0, abs=1e-4)  # rescored: exact
            recall.append(len({h.patch_id for h in hits} & set(exact)) / 5)
        assert np.mean(recall) >= (0.6 if quantization == "binary" else 0.9), np.mean(recall)
    finally:
        idx.close()
    with pytest.raises(ValueError, match="quantization must be one of"):
        quantization_for(IndexSettings(quantization="pq"), 128)


def test_a_collection_is_not_silently_reused_with_another_quantization(tmp_path: Path) -> None:
    from bigearth.retrieval import IndexSettings

    idx = open_index(str(tmp_path / "index"), "q", settings=IndexSettings(quantization="int8"))
    idx.create({"fused": 128}, {"model": "unit", "vector_kinds": {"fused": "features"}})
    idx.create({"fused": 128}, {"model": "unit", "vector_kinds": {"fused": "features"}})  # the same: reused
    idx.close()
    other = open_index(str(tmp_path / "index"), "q", settings=IndexSettings(quantization="binary"))
    with pytest.raises(VectorIndexError, match=r"stores its vectors differently \(quantization 'int8' there"):
        other.create({"fused": 128}, {"model": "unit", "vector_kinds": {"fused": "features"}})
    with pytest.raises(VectorIndexError, match=r"vector_kinds .* there, .* asked"):
        other.create({"fused": 128}, {"model": "unit", "vector_kinds": {"fused": "aligned"}})
    other.create({"fused": 128}, {"model": "unit"}, recreate=True)
    assert other.metadata()["quantization"] == "binary"
    other.close()


def test_scroll_pages_through_a_filter_once_and_facets_count_it(index: VectorIndex) -> None:
    _, _, payloads = _corpus()
    flt = SearchFilter(country=["Finland", "Portugal"], labels_any=["Arable land"])
    want = {p["patch_id"] for p in payloads if p["country"] != "Austria" and "Arable land" in p["labels"]}
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(100):
        page, cursor = index.scroll(flt, limit=7, cursor=cursor)
        assert len(page) <= 7 and all(r.payload["patch_id"] == r.patch_id and not r.vectors for r in page)
        seen += [r.patch_id for r in page]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) and set(seen) == want
    first, after = index.scroll(None, limit=5)
    assert len(first) == 5 and after is not None and index.scroll(None, limit=5)[0] == first  # stable order
    assert index.facet("country") == {c: sum(p["country"] == c for p in payloads) for c in COUNTRIES}
    labels = index.facet("labels", SearchFilter(country=["Austria"]))
    austria = [p for p in payloads if p["country"] == "Austria"]
    assert labels == {lb: n for lb in LABELS if (n := sum(lb in p["labels"] for p in austria))}
    assert list(labels.values()) == sorted(labels.values(), reverse=True)


def test_a_bare_date_to_includes_that_day_from_python_and_from_json() -> None:
    for flt in (
        SearchFilter(date_from="2017-06-13", date_to="2017-06-13"),
        SearchFilter.model_validate_json('{"date_from": "2017-06-13", "date_to": "2017-06-13"}'),
    ):
        lo, hi = flt.bounds()
        assert lo is not None and hi is not None
        assert lo.startswith("2017-06-13T00:00:00") and hi.startswith("2017-06-13T23:59:59")
    with pytest.raises(ValidationError, match="date_to"):
        SearchFilter(date_to="2017-13-45")
    assert SearchFilter(date_to="2017-06-13T10:00:00Z").bounds()[1].startswith("2017-06-13T10:00:00")  # type: ignore[union-attr]


def _target(engine: str, tmp_path: Path) -> str:
    return str(tmp_path / "index") if engine == "edge" else f"qdrant-local:{tmp_path / 'qdrant'}"


def _versions(idx: VectorIndex) -> list[str]:
    return idx._versions()  # what is on disk / on the server: the live, previous and any other versions


def test_a_rebuild_is_invisible_until_published_then_nothing_of_the_old_survives(index: VectorIndex) -> None:
    """Another model's vectors of the same size, fewer pairs: the open reader keeps the old version until it
    reopens; once switched, no old point or metadata is seen; two switches later the old version is gone."""
    ids, vectors, payloads = _corpus(seed=2)
    old = index.version
    builder = index.rebuild({"fused": DIM, "s1": 4}, {"model": "other"})
    builder.upsert(ids[:10], {k: v[:10] for k, v in vectors.items()}, payloads[:10])
    builder.finish()
    assert open_index(index.target, "test").live_version() == old  # not switched yet
    assert index.count() == N
    builder.publish()
    assert index.live_version() == builder.version != old
    assert index.count() == N and index.metadata()["model"] == "unit"  # the open reader: its version, intact
    fresh = open_index(index.target, "test")
    try:
        assert fresh.count() == 10 and fresh.metadata()["model"] == "other"
        assert (
            fresh.retrieve([ids[50]]) == {} and fresh.search(vectors["fused"][50], "fused", k=1)[0].patch_id != ids[50]
        )
    finally:
        fresh.close()
    assert _versions(index) == [old, builder.version]  # the previous is kept for readers still on it
    builder.close()
    again = index.rebuild({"fused": DIM, "s1": 4}, {"model": "third"})
    again.publish(exclusive=True)  # as the indexing job does, holding the collection's writer lock
    assert old not in _versions(builder) and _versions(builder) == [builder.version, again.version]
    again.close()


def test_a_failed_rebuild_leaves_the_live_version_and_is_cleaned_up(index: VectorIndex) -> None:
    ids, vectors, payloads = _corpus(seed=2)
    live = index.live_version()
    half = index.rebuild({"fused": DIM, "s1": 4}, {"model": "other"})
    half.upsert(ids[:5], {k: v[:5] for k, v in vectors.items()}, payloads[:5])
    half.discard()  # what the job does when it fails
    assert index.live_version() == live and _versions(index) == [live]
    killed = index.rebuild({"fused": DIM, "s1": 4}, {"model": "other"})
    killed.upsert(ids[:5], {k: v[:5] for k, v in vectors.items()}, payloads[:5])
    killed.close()  # never published nor discarded: a killed job
    assert index.live_version() == live and index.count() == N and len(_versions(index)) == 2
    nxt = index.rebuild({"fused": DIM, "s1": 4}, {"model": "next"}, exclusive=True)  # the next (locked) job
    # removes the leftover first
    assert _versions(index) == [live, nxt.version]
    nxt.discard()
    assert _versions(index) == [live]


def test_a_collection_made_before_versions_is_replaced_by_its_first_rebuild(tmp_path: Path) -> None:
    """Qdrant: a plain collection named like the alias; embedded: collection.json and shard/ at the top."""
    from bigearth.retrieval.qdrant import QdrantIndex

    ids, vectors, payloads = _corpus()
    for engine in ("edge", "qdrant-local"):
        target = _target(engine, tmp_path)
        idx = open_index(target, "test")
        legacy = idx._at("test" if engine == "qdrant-local" else "")  # how the old code laid it out
        legacy._create({"fused": DIM}, {"model": "unit", "vectors": {"fused": DIM}})
        legacy.upsert(ids[:7], {"fused": vectors["fused"][:7]}, payloads[:7])
        legacy.close()
        assert idx.count() == 7 and idx.version == ("test" if isinstance(idx, QdrantIndex) else "")
        new = idx.rebuild({"fused": DIM}, {"model": "new"})
        new.upsert(ids[:3], {"fused": vectors["fused"][:3]}, payloads[:3])
        new.publish()
        fresh = open_index(target, "test")
        assert fresh.count() == 3 and fresh.metadata()["model"] == "new"
        fresh.close()
        if engine == "edge":  # the open reader keeps its files until the next switch
            assert idx.count() == 7
        again = new.rebuild({"fused": DIM}, {"model": "again"})
        again.publish()
        assert _versions(idx) == [new.version, again.version], engine
        for x in (again, new, idx):
            x.close()


def test_the_embedded_engine_switches_with_a_rename_and_refuses_a_foreign_pointer(tmp_path: Path) -> None:
    from bigearth.retrieval.backends import VERSION, new_version

    idx = open_index(str(tmp_path), "c")
    idx.create({"fused": 4}, {"model": "unit"})
    pointer = tmp_path / "c" / "current"
    assert VERSION.fullmatch(pointer.read_text().strip()) and not list((tmp_path / "c").glob("*.tmp"))
    pointer.write_text("../../etc\n")
    with pytest.raises(VectorIndexError, match=r"current: expected the name of a version folder"):
        open_index(str(tmp_path), "c").count()
    idx.close()
    later = "v20990101T000000000000-abcdef"
    assert new_version([later]) > later and new_version() < later  # after every existing one, even a clock behind


def test_the_embedded_engine_never_points_current_at_a_missing_or_unfinished_version(tmp_path: Path) -> None:
    idx = open_index(str(tmp_path), "c")
    idx.create({"fused": 4}, {"model": "unit"})
    pointer = tmp_path / "c" / "current"
    live = pointer.read_text()
    missing = "v20990101T000000000000-abcdef"
    with pytest.raises(VectorIndexError, match=rf"refusing to make '{missing}' live: .*{missing}/collection.json"):
        idx._switch(missing)
    (tmp_path / "c" / missing).mkdir()  # a folder without its collection.json: unfinished or being removed
    with pytest.raises(VectorIndexError, match="does not exist"):
        idx._switch(missing)
    with pytest.raises(VectorIndexError, match="is not a version name"):
        idx._switch("../../etc")
    assert pointer.read_text() == live and open_index(str(tmp_path), "c").count() == 0
    assert [p.name for p in (tmp_path / "c").iterdir() if p.name.startswith(".")] == []  # no temporary left
    idx.close()


@pytest.mark.parametrize("engine", ["edge", "qdrant-local"])
def test_without_the_writer_lock_a_young_unpublished_version_is_never_pruned(engine: str, tmp_path: Path) -> None:
    """Another job's build in progress (a version newer than the live one, started minutes ago) survives a rebuild
    that does not hold the lock; one started days ago is a leftover and goes; the live one never goes."""
    from bigearth.retrieval.backends import version_age_s

    idx = open_index(_target(engine, tmp_path), "test")
    idx.create({"fused": DIM}, {"model": "unit"})
    live = idx.live_version()
    running = idx.rebuild({"fused": DIM}, {"model": "other job, still building"})
    leftover, before = (idx._at(f"v2000010{d}T000000000000-abcdef") for d in (1, 2))  # killed builds, long ago
    for o in (leftover, before):  # (the later one counts as the version before the live one: kept)
        o._create({"fused": DIM}, {"model": "killed", "vectors": {"fused": DIM}})
        o.close()
    assert (version_age_s(running.version or "", "test") or 0) < 60
    assert (version_age_s(leftover.version or "", "test") or 0) > 24 * 3600
    mine = idx.rebuild({"fused": DIM}, {"model": "mine"})  # no lock held: prunes what is surely dead only
    assert running.version in _versions(idx) and leftover.version not in _versions(idx)
    assert idx.live_version() == live
    mine.publish()
    assert running.version in _versions(idx) and live in _versions(idx)  # still building; the previous one
    for x in (running, mine, idx):
        x.close()


def test_prune_stops_when_the_live_version_changes_under_it(tmp_path: Path) -> None:
    idx = open_index(str(tmp_path / "index"), "test")
    idx.create({"fused": DIM}, {"model": "unit"})
    old = [idx._at(f"v2000010{d}T000000000000-abcdef") for d in (1, 2)]
    for o in old:
        o._create({"fused": DIM}, {"model": "old", "vectors": {"fused": DIM}})
        o.close()
    live = idx.live_version()
    looks = []
    real = type(idx).live_version

    def switched_after_first_look(self: VectorIndex) -> str | None:
        looks.append(1)
        return real(self) if len(looks) == 1 else "v20991231T000000000000-abcdef"  # another job switched

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(idx), "live_version", switched_after_first_look)
        idx.prune(exclusive=True)
    assert len(looks) == 2 and live in _versions(idx) and old[0].version in _versions(idx)
    idx.prune(exclusive=True)  # nothing switched: the oldest goes, the one before the live one stays
    assert _versions(idx) == [old[1].version, live]
    idx.close()


def test_a_qdrant_collection_has_one_writer_at_a_time(tmp_path: Path) -> None:
    """The marker collection `<collection>-lock`: a second index job is refused naming the first; a stale one is
    taken over; the holder whose lock was taken over stops before it publishes; the marker is no version."""
    from bigearth.core.outputlock import OutputLocked
    from bigearth.retrieval.qdrant import QdrantLock

    idx = open_index(f"qdrant-local:{tmp_path / 'qdrant'}", "test")
    idx.create({"fused": DIM}, {"model": "unit"})
    first = idx.writer_lock("index", break_lock=False)
    assert isinstance(first, QdrantLock)
    with first:
        with pytest.raises(OutputLocked, match=r"is being written by index on .* \(lock .*collection 'test-lock'\)"):
            idx.writer_lock("index").acquire()
        assert idx.client.collection_exists("test-lock") and "test-lock" not in _versions(idx)
        assert idx.client.get_collection("test-lock").config.metadata["token"] == first.token
        # its heartbeat stops (a killed job on another host): stale after 10 min, taken over
        stale = dict(first._record, heartbeat="2000-01-01T00:00:00+00:00", host="other-host")
        idx.client.update_collection("test-lock", metadata=stale)
        second = idx.writer_lock("index")
        second.acquire()
        with pytest.raises(OutputLocked, match="taken over by index on"):
            first.refresh()  # the next heartbeat tells the first job
        with pytest.raises(OutputLocked, match="stops without committing"):
            first.check()  # what build_index calls right before publish
        first.release()
        assert idx.client.get_collection("test-lock").config.metadata["token"] == second.token  # left alone
        second.refresh()
        second.release()
    assert not idx.client.collection_exists("test-lock")
    idx.close()
