"""The indexing job and the retrieval evaluation on a real local Ray: tiny-cpu embeds a synthetic archive."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bigearth.data import read_columns
from bigearth.retrieval import SearchFilter, open_index
from bigearth.retrieval.evaluation import evaluate_retrieval, ranking_metrics
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


def test_reindexing_updates_in_place(index_v2: Path, tiny_run: Path, shards_v2: Path, tmp_path: Path) -> None:
    import index as index_job  # jobs/index.py

    before = open_index(str(index_v2))
    n = before.count()
    before.close()
    report = tmp_path / "report.json"
    argv = ["--checkpoint", str(tiny_run), "--data", str(shards_v2), "--index", str(index_v2), "--splits", "test"]
    assert index_job.main([*argv, "--report", str(report)]) == 0
    r = json.loads(report.read_text())
    assert set(r["per_split"]) == {"test"} and r["upserted"] == r["per_split"]["test"] > 0
    assert r["points_in_collection"] == n


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


def test_ranking_metrics_by_hand() -> None:
    archive = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0]], float)
    query = np.array([1, 1, 0], float)
    retrieved = archive[[2, 1, 0]]  # irrelevant, 2 shared labels, 1 shared label
    m = ranking_metrics(query, retrieved, archive, k=3)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)  # 3 relevant pairs in the archive
    assert m["map"] == pytest.approx((1 / 2 + 2 / 3) / 3)
    dcg = 3 / np.log2(3) + 1 / np.log2(4)
    idcg = 3 / np.log2(2) + 1 / np.log2(3) + 1 / np.log2(4)
    assert m["ndcg"] == pytest.approx(dcg / idcg)
    # the second normalisation: by the 2 relevant pairs among the 3 retrieved
    assert m["map_retrieved"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # shared labels 0, 2, 1: ACG@3 = 3/3; ACG@i at the relevant ranks 2 and 3: 2/2, 3/3 -> WAP = (1 + 1) / 2
    assert m["acg"] == pytest.approx(1.0)
    assert m["wap"] == pytest.approx(1.0)
    # F1 per item: 2 g / (2 + labels of the item): 0, 2*2/(2+2), 2*1/(2+1); mean over k = 3
    assert m["f1"] == pytest.approx((0 + 1 + 2 / 3) / 3)
    # the query in the archive (row 1, same split): not counted as relevant (2 others remain)
    m = ranking_metrics(query, archive[[0, 3]], archive, k=2, exclude=1)
    assert m["recall"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0)
    assert m["wap"] == pytest.approx((1 / 1 + 2 / 2) / 2)  # g = 1, 1: ACG@1 = 1, ACG@2 = 1


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


def test_an_early_fusion_index_refuses_cross_modal_search_and_says_why(shards_v2: Path, tmp_path: Path) -> None:
    from bigearth.api import ApiError
    from bigearth.serving.deployments import Retriever, missing_vectors

    pid = read_columns(str(shards_v2), ["patch_id"], "test").column("patch_id")[0].as_py()
    index = open_index(str(tmp_path / "early"))
    index.create({"fused": 4}, {"model": {"name": "tiny", "fusion": "early"}, "vector_kinds": {"fused": "features"}})
    index.upsert([pid], {"fused": np.ones((1, 4), np.float32)}, [{"patch_id": pid, "labels": [], "split": "test"}])
    index.finish()
    index.close()
    retriever = Retriever(str(tmp_path / "early"), "bigearthnet", str(shards_v2), None)
    with pytest.raises(ApiError) as e:
        retriever.search({"patch_id": pid, "using": "s2", "query_modality": "s1"}, None)
    assert e.value.status == 422 and e.value.field == "using"
    assert "no 's2' vectors; it has ['fused'] (an early-fusion model stacks S1 and S2" in str(e.value)
    # an upload to an early-fusion Classifier asking for one modality's vector is refused the same way
    msg = missing_vectors("s1", ["fused"], "tiny/early")
    assert msg.startswith("this model makes no 's1' vectors; it makes ['fused'] (an early-fusion model")
    assert "early" not in missing_vectors("s1", ["fused", "s2"], "s2")
    ok = retriever.search({"patch_id": pid, "using": "fused", "include_query": True, "k": 1}, None)
    assert ok["hits"][0]["patch_id"] == pid and ok["vector_kind"] == "features"
