"""Benchmark: aligned cross-modal vectors against logit-share vectors, same data, same seed, same epochs, one run.

    .venv/bin/python bench/cross_modal.py [--pairs 2000] [--epochs 8] [--workdir .bench] \
        [--out bench/results/cross-modal.json]

A synthetic v2 archive (`bigearth synth`) is ingested once; the `tiny-cpu` model is trained twice with
`retrieval.cross_modal` = `logits` (the baseline: each modality's share of the class logits) and `aligned`
(projection heads trained with the contrastive objective of `bigearth.models.align`), everything else equal. Each
is evaluated on the test split (`jobs/evaluate.py`'s code) and indexed (`jobs/index.py`'s), then
`jobs/evaluate_retrieval.py`'s code runs every mode (`fused`, `s1`, `s2`, `s1->s2`, `s2->s1`) through the index
(the embedded engine, as the service searches: the 128-d aligned vectors int8-quantized and rescored, the 19-d
logit vectors stored as they are), all test pairs as queries against the train split. The targets (issue 12) are
checked as differences in this run: s1->s2 and s2->s1 mAP@10 at least 0.05 higher with aligned; aligned s1->s2
at least aligned s1; fused and s2 no more than 0.01 lower; test micro F1 no more than 0.01 lower.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
MODES = ("fused", "s1", "s2", "s1->s2", "s2->s1")


def run_one(
    mode: str, shards: Path, work: Path, epochs: int, seed: int, queries: int, extra: list[str]
) -> dict[str, Any]:
    import shutil

    from bigearth.evaluation.classification import evaluate
    from bigearth.retrieval.evaluation import evaluate_retrieval
    from bigearth.retrieval.indexer import build_index
    from bigearth.training.config import load_config
    from bigearth.training.trainer import train

    cfg = load_config(
        REPO / "configs" / "tiny-cpu.yaml",
        [f"retrieval.cross_modal={mode}", f"optim.epochs={epochs}", f"run.seed={seed}", "run.patience=100", *extra],
    )
    runs = work / "runs"
    shutil.rmtree(runs / f"tiny-{mode}", ignore_errors=True)  # a fresh run, never a resumed one
    t = time.perf_counter()
    train(cfg, str(shards), str(runs), f"tiny-{mode}")
    train_s = time.perf_counter() - t
    run = runs / f"tiny-{mode}"
    metrics = evaluate(str(run), str(shards), "test", str(work / f"eval-{mode}"))
    index = work / f"index-{mode}"
    build_index(str(run), str(shards), str(index), recreate=True, progress=False)
    r = evaluate_retrieval(str(index), str(shards), str(work / f"retrieval-{mode}"), queries=queries, exact_queries=0)
    return {
        "train_s": round(train_s, 1),
        "test_micro_f1": metrics["micro_f1"],
        "test_macro_ap": metrics["macro_ap"],
        "vector_kinds": r["vector_kinds"],
        "modes": {m: r["modes"][m] for m in MODES if m in r["modes"]},
        "queries": r["queries"],
        "archive_pairs": r["archive_pairs"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--workdir", default=str(REPO / ".bench"))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "cross-modal.json"))
    p.add_argument("--set", action="append", default=[], help="config override for the aligned run (a.b=value)")
    p.add_argument("--baseline", help="reuse the logits run of this earlier report (JSON) instead of training it")
    a = p.parse_args()
    sys.path.insert(0, str(REPO / "platform"))
    from bigearth.ingest.job import ingest
    from bigearth.synth.archive import synthesize

    work = Path(a.workdir) / f"cross-modal-{a.pairs}"
    archive, shards = work / "archive", work / "shards"
    if not (shards / "manifest.json").exists():
        synthesize(str(archive), layout="v2", pairs=a.pairs, seed=a.seed, progress=False)
        ingest(str(archive), str(shards), shard_size=100)
    results = {}
    if a.baseline:
        results["logits"] = json.loads(Path(a.baseline).read_text())["results"]["logits"]
    else:
        results["logits"] = run_one("logits", shards, work, a.epochs, a.seed, a.queries, [])
    results["aligned"] = run_one("aligned", shards, work, a.epochs, a.seed, a.queries, a.set)
    k = 10
    base, new = results["logits"], results["aligned"]

    def m(r: dict[str, Any], mode: str) -> float:
        return float(r["modes"][mode][f"map@{k}"])

    checks = {
        "s1->s2 mAP@10 +0.05": m(new, "s1->s2") - m(base, "s1->s2") >= 0.05,
        "s2->s1 mAP@10 +0.05": m(new, "s2->s1") - m(base, "s2->s1") >= 0.05,
        "aligned s1->s2 >= aligned s1": m(new, "s1->s2") >= m(new, "s1"),
        "fused no more than 0.01 lower": m(new, "fused") >= m(base, "fused") - 0.01,
        "s2 no more than 0.01 lower": m(new, "s2") >= m(base, "s2") - 0.01,
        "test micro F1 no more than 0.01 lower": new["test_micro_f1"] >= base["test_micro_f1"] - 0.01,
    }
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "pairs": a.pairs,
        "epochs": a.epochs,
        "seed": a.seed,
        "aligned_overrides": a.set,
        "results": results,
        "checks": checks,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1))
    print(f"| mode | logits mAP@{k} | aligned mAP@{k} | difference |")
    print("|---|---|---|---|")
    for mode in MODES:
        print(f"| {mode} | {m(base, mode):.3f} | {m(new, mode):.3f} | {m(new, mode) - m(base, mode):+.3f} |")
    f1b, f1n = base["test_micro_f1"], new["test_micro_f1"]
    print(f"| test micro F1 | {f1b:.3f} | {f1n:.3f} | {f1n - f1b:+.3f} |")
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
