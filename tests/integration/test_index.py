"""The indexing job and the retrieval evaluation on a real local Ray: tiny-cpu embeds a synthetic archive."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from bigearth.input.raydata import read_columns
from bigearth.models.checkpoints import resolve
from bigearth.retrieval import SearchFilter, open_index
from bigearth.retrieval.evaluation import evaluate_retrieval
from helpers import REPO

pytestmark = pytest.mark.usefixtures("ray_local")
sys.path.insert(0, str(REPO / "jobs"))


def test_one_point_per_pair_with_its_metadata(index_v2: Path, shards_v2: Path) -> None:
    rows = read_columns(str(shards_v2), ["patch_id", "labels", "split", "country", "s1_name"]).to_pylist()
    index = open_index(str(index_v2))
    try:
        assert index.count() == len(rows)
        meta = index.metadata()
        assert meta["vectors"] == {"fused": meta["vectors"]["fused"], "s1": 128, "s2": 128}
        assert meta["vector_kinds"] == {"fused": "features", "s1": "aligned", "s2": "aligned"}
        for split in ("train", "validation", "test"):
            assert index.count(SearchFilter(split=split)) == sum(r["split"] == split for r in rows)
        got = index.retrieve([r["patch_id"] for r in rows[:20]])
        for r in rows[:20]:
            p = got[r["patch_id"]].payload
            assert (p["labels"], p["split"], p["country"], p["s1_name"]) == (
                r["labels"],
                r["split"],
                r["country"],
                r["s1_name"],
            )
            assert p["season"] in {"winter", "spring", "summer", "autumn"} and p["date"].endswith("Z")
            assert -90 < p["location"]["lat"] < 90
    finally:
        index.close()


def test_a_pair_finds_itself_and_cross_modal_search_answers(index_v2: Path, shards_v2: Path) -> None:
    pid = read_columns(str(shards_v2), ["patch_id"], "test").column("patch_id")[0].as_py()
    index = open_index(str(index_v2))
    try:
        rec = index.retrieve([pid], with_vectors=True)[pid]
        hits = index.search(rec.vectors["fused"], "fused", k=3)
        assert hits[0].patch_id == pid and hits[0].score == pytest.approx(1.0, abs=1e-2)
        cross = index.search(rec.vectors["s1"], "s2", k=5, flt=SearchFilter(split="train"))
        assert len(cross) == 5 and all(h.payload["split"] == "train" for h in cross)
    finally:
        index.close()


def test_a_rerun_rebuilds_and_add_updates_in_place_only_from_the_same_checkpoint(
    index_v2: Path, tiny_run: Path, shards_v2: Path, tmp_path: Path
) -> None:
    import index as index_job  # jobs/index.py
    from bigearth.retrieval import VectorIndexError
    from bigearth.retrieval.indexer import build_index

    target = tmp_path / "edge"
    shutil.copytree(index_v2, target)
    before = open_index(str(target))
    n, version, test = before.count(), before.live_version(), before.count(SearchFilter(split="test"))
    before.close()
    report = tmp_path / "report.json"
    argv = ["--checkpoint", str(tiny_run), "--data", str(shards_v2), "--index", str(target), "--splits", "test"]
    assert index_job.main([*argv, "--add", "--report", str(report)]) == 0
    r = json.loads(report.read_text())
    assert set(r["per_split"]) == {"test"} and r["upserted"] == r["per_split"]["test"] == test > 0
    assert r["points_in_collection"] == n and r["version"] == version  # in place
    assert index_job.main([*argv, "--report", str(report)]) == 0  # a rebuild: the index is what this run indexed
    r = json.loads(report.read_text())
    assert r["points_in_collection"] == test and r["version"] != version
    other = tmp_path / "other-checkpoint"
    shutil.copytree(resolve(str(tiny_run)).path, other)
    with pytest.raises(VectorIndexError, match=r"--add upserts only into a version built from the same .*checkpoint"):
        build_index(str(other), str(shards_v2), str(target), splits=["test"], add=True, progress=False)


def test_evaluate_retrieval_job(index_v2: Path, shards_v2: Path, tmp_path: Path) -> None:
    import evaluate_retrieval as job  # jobs/evaluate_retrieval.py

    assert job.main(["--index", str(index_v2), "--data", str(shards_v2), "--out", str(tmp_path), "--k", "5"]) == 0
    r = json.loads((tmp_path / "retrieval.json").read_text())
    assert set(r["modes"]) == {"fused", "s1", "s2", "s1->s2", "s2->s1"}
    assert r["vector_kinds"] == {"fused": "features", "s1": "aligned", "s2": "aligned"}
    for m in r["modes"].values():
        assert all(0.0 <= m[f"{key}@5"] <= 1.0 for key in ("map", "map_retrieved", "precision", "recall", "ndcg", "f1"))
        assert m["map_retrieved@5"] >= m["map@5"] - 1e-9  # hits <= min(k, relevant)
        assert m["index_recall@5_vs_exact"] >= 0.9
    # a model trained on this archive retrieves same-label pairs far above chance
    assert r["modes"]["fused"]["precision@5"] > 0.5
    assert (
        "| s1->s2 |" in (tmp_path / "retrieval.md").read_text()
        and "`s1` aligned" in (tmp_path / "retrieval.md").read_text()
    )


def test_retrieval_against_the_same_split_never_returns_the_query(index_v2: Path, shards_v2: Path) -> None:
    from bigearth.retrieval.evaluation import search_others

    r = evaluate_retrieval(
        str(index_v2), str(shards_v2), k=5, queries=20, query_split="train", archive_split="train", exact_queries=5
    )
    assert r["query_excluded"] is True and r["modes"]["fused"]["index_recall@5_vs_exact"] >= 0.9
    index = open_index(str(index_v2))
    try:
        train = SearchFilter(split=["train"])
        for pid in read_columns(str(shards_v2), ["patch_id"], "train").column("patch_id").to_pylist()[:10]:
            vector = index.retrieve([pid], with_vectors=True)[pid].vectors["fused"]
            assert index.search(vector, "fused", k=5, flt=train)[0].patch_id == pid  # what has to be dropped
            for exact in (False, True):
                others = search_others(index, vector, "fused", 5, train, pid, exact=exact)
                assert len(others) == 5 and pid not in {h.patch_id for h in others}
            assert search_others(index, vector, "fused", 5, train, None)[0].patch_id == pid
    finally:
        index.close()


def test_evaluating_an_index_without_the_queries_is_a_clear_error(index_v2: Path, tmp_path: Path) -> None:
    from bigearth.retrieval import VectorIndexError

    with pytest.raises(VectorIndexError, match="no such collection"):
        evaluate_retrieval(str(index_v2), str(tmp_path), collection="missing")


def _other_checkpoint(tiny_run: Path, out: Path) -> Path:
    """Another model of the same kind and vector sizes: tiny_run's best checkpoint with its weights moved."""
    import torch

    shutil.copytree(resolve(str(tiny_run)).path, out)
    state = torch.load(out / "model.pt", weights_only=True)
    gen = torch.Generator().manual_seed(1)
    state = {  # weights and biases, not the batch-norm statistics (a negative variance gives NaN vectors)
        k: v + 0.2 * v.std().nan_to_num() * torch.randn(v.shape, generator=gen)
        if v.is_floating_point() and "running" not in k and v.numel() > 1
        else v
        for k, v in state.items()
    }
    torch.save(state, out / "model.pt")
    return out


@pytest.mark.parametrize("engine", ["edge", "qdrant-local"])
def test_the_service_keeps_answering_while_the_index_is_rebuilt(
    engine: str, index_v2: Path, tiny_run: Path, shards_v2: Path, tmp_path: Path
) -> None:
    """A running Retriever (the service's index deployment, in-process) answers a search loop throughout: a
    rebuild with another checkpoint switches it to the new points and metadata (nothing stale survives), a rebuild
    that fails mid-way leaves it on the version it had, and the unfinished version is removed."""
    from bigearth.api.schemas import ApiError
    from bigearth.retrieval.indexer import build_index
    from bigearth.serving.deployments import Retriever

    if engine == "edge":
        target = str(tmp_path / "edge")
        shutil.copytree(index_v2, target)
    else:
        target = f"qdrant-local:{tmp_path / 'qdrant'}"
        build_index(str(tiny_run), str(shards_v2), target, progress=False)
    rows = read_columns(str(shards_v2), ["patch_id", "split"]).to_pylist()
    test_id = next(r["patch_id"] for r in rows if r["split"] == "test")
    train_id = next(r["patch_id"] for r in rows if r["split"] == "train")
    retriever = Retriever(target, "bigearthnet", str(shards_v2), None)
    retriever.recheck_s = 0.0
    old_meta, old_version = retriever.meta, retriever.index.version
    query = {"patch_id": test_id, "using": "fused", "k": 3, "include_query": True}
    old_top = retriever.search(query, None)["hits"]
    assert retriever.facets([])["total"] == len(rows)  # counted now, and cached
    answers: list[tuple[str, float]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def ask() -> None:  # what clients do meanwhile
        while not stop.is_set():
            try:
                hit = retriever.search(query, None)["hits"][0]
                answers.append((hit["patch_id"], retriever.ready()["points"]))
            except BaseException as e:  # every failure is a finding
                errors.append(e)
            time.sleep(0.01)

    client = threading.Thread(target=ask, daemon=True)
    client.start()
    try:
        other = _other_checkpoint(tiny_run, tmp_path / "other")
        built = build_index(str(other), str(shards_v2), target, splits=["test"], progress=False)
        assert built["version"] != old_version
        deadline = time.monotonic() + 30
        while retriever.index.version != built["version"] and time.monotonic() < deadline:
            time.sleep(0.05)
        meta = retriever.meta
        assert meta["checkpoint"] == str(other) and meta["checkpoint_digest"] != old_meta["checkpoint_digest"]
        assert retriever.ready()["points"] == built["per_split"]["test"] == built["points_in_collection"]
        assert retriever.facets([])["total"] == built["points_in_collection"]  # no count of the old version cached
        with pytest.raises(ApiError, match="not in the index"):  # a train pair of the old index: gone
            retriever.search({"patch_id": train_id, "using": "fused"}, None)
        assert retriever.search(query, None)["hits"] != old_top  # the new model's vectors
        # a rebuild that fails mid-way (a damaged shard): the Retriever stays on the version it has
        damaged = tmp_path / "damaged"
        shutil.copytree(shards_v2, damaged)
        shard = sorted((damaged / "train").glob("*.parquet"))[-1]
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        with pytest.raises(Exception):  # noqa: B017 - whatever the reader raises, the job stops
            build_index(str(tiny_run), str(damaged), target, progress=False)
        time.sleep(0.2)
        assert retriever.index.version == built["version"] and retriever.index.live_version() == built["version"]
        assert retriever.ready()["points"] == built["points_in_collection"] and retriever.meta == meta
        assert len(retriever.index._versions()) == 2  # the live and the previous one, not the unfinished one
        if engine == "edge":  # a live version that cannot be opened: it stays on the one it has
            pointer = Path(target) / "bigearthnet" / "current"
            good = pointer.read_text()
            pointer.write_text("v20990101T000000000000-abcdef\n")
            assert retriever.search(query, None)["hits"] and retriever.index.version == built["version"]
            pointer.write_text(good)
    finally:
        stop.set()
        client.join(timeout=30)
    assert not errors, errors[:3]
    before = [a for a in answers if a[1] == len(rows)]
    after = [a for a in answers if a[1] == built["points_in_collection"]]
    assert before and after and len(before) + len(after) == len(answers)  # the old index, then the new one
    assert all(pid == test_id for pid, _ in answers)
    retriever.index.close()
