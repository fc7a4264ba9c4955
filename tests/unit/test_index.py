"""Retrieval metrics by hand and an early-fusion index's refusals, without Ray (the indexing job on a local Ray:
tests/integration/test_index.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bigearth.input.raydata import read_columns
from bigearth.retrieval import open_index
from bigearth.retrieval.evaluation import ranking_metrics


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


def test_an_early_fusion_index_refuses_cross_modal_search_and_says_why(shards_v2: Path, tmp_path: Path) -> None:
    from bigearth.api.schemas import ApiError
    from bigearth.serving.retriever import Retriever, missing_vectors

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
    msg = missing_vectors("s1", ["fused"], early_fusion=True)
    assert msg.startswith("this model makes no 's1' vectors; it makes ['fused'] (an early-fusion model")
    assert "early" not in missing_vectors("s1", ["fused", "s2"], early_fusion=False)
    ok = retriever.search({"patch_id": pid, "using": "fused", "include_query": True, "k": 1}, None)
    assert ok["hits"][0]["patch_id"] == pid and ok["vector_kind"] == "features"


def test_an_index_says_early_fusion_from_the_spec_the_indexer_recorded() -> None:
    from bigearth.serving.retriever import early_fusion_index

    # the indexer records the spec's capability; a model named otherwise is taken at its spec's word
    assert early_fusion_index({"early_fusion": True, "model": {"name": "my-fused"}})
    assert not early_fusion_index({"early_fusion": False, "model": {"name": "tiny", "fusion": "early"}})
    # an index built before the capability was recorded: its model's name or fusion
    assert early_fusion_index({"model": {"name": "tiny", "fusion": "early"}})
    assert not early_fusion_index({"model": {"name": "late"}}) and not early_fusion_index({})


@pytest.mark.parametrize("exclude", [None, 17])
def test_archive_relevance_matches_the_sorted_ideal_ranking(exclude: int | None) -> None:
    """The tally (one pass, no sort) gives what sorting every shared-label count gave, on an archive of 200,000
    pairs (the full archive's train split is 240,000: the sort per query and mode was the evaluation's cost)."""
    from bigearth.retrieval.evaluation import archive_relevance

    rng = np.random.default_rng(0)
    archive = (rng.random((200_000, 19)) < 0.15).astype(np.float64)
    for q in range(3):
        query = archive[17] if q == 0 else (rng.random(19) < 0.3).astype(np.float64)
        shared = archive @ query
        if exclude is not None:
            shared = np.delete(shared, exclude)
        for k in (1, 10, 100):
            total, ideal = archive_relevance(query, archive, k, exclude)
            assert total == int((shared > 0).sum())
            assert ideal.tolist() == np.sort(shared)[::-1][:k].tolist()
    # a query sharing nothing with a tiny archive: its ideal ranking is all zeros, shorter than k
    total, ideal = archive_relevance(np.array([0, 0, 1.0]), np.array([[1.0, 0, 0]]), 10)
    assert total == 0 and ideal.tolist() == [0.0]
    retrieved = archive[[1, 2]]
    assert ranking_metrics(archive[17], retrieved, archive, 10, 17) == ranking_metrics(
        archive[17], retrieved, archive, 10, 17, archive_relevance(archive[17], archive, 10, 17)
    )
