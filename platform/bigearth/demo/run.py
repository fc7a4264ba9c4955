"""The whole platform on embedded defaults (local Ray, local folders, the embedded vector engine), end to end:

synthesise an archive in the real v2 layout, reference maps included -> ingest -> train a small fused S1+S2 model
-> evaluate (overall, by country, by season) -> index -> evaluate retrieval -> train and evaluate a small S1+S2
segmentation model on the reference maps -> serve both -> classify, search and segment through the SDK (and a REAL
patch when ../shared is there) -> an HTML report. `bigearth demo` (= `make demo`); `--serve` keeps the service
running afterwards. The models are `configs/tiny-cpu.yaml` and `configs/seg-tiny-cpu.yaml` (the tests' configs),
trained for the demo's number of epochs.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAGES = 9
#: The demo's model and recipe: the repository's config file (a checkout or an editable install).
#: Where the demo's config is looked for, in order: the checkout this package runs from, then `configs/` in the
#: working folder (the image: the package installed as a wheel, `configs/` beside the jobs).
DEMO_CONFIGS = (
    Path(__file__).resolve().parents[3] / "configs" / "tiny-cpu.yaml",
    Path("configs") / "tiny-cpu.yaml",
)
#: The demo's segmentation model, looked for in the same places.
SEG_CONFIG = "seg-tiny-cpu.yaml"


@dataclass(frozen=True)
class Workdir:
    """The demo's folders, one per stage, under one working folder."""

    root: Path

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def run(self) -> Path:
        return self.root / "runs" / "tiny"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def seg_run(self) -> Path:
        return self.root / "runs" / "seg-tiny"

    @property
    def seg_eval(self) -> Path:
        return self.root / "eval-segmentation"

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def retrieval(self) -> Path:
        return self.root / "retrieval"

    @property
    def report(self) -> Path:
        return self.root / "report"


class Stages:
    """Announces and times the stages: `with stages.stage("train", 3, "training ..."):`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextmanager
    def stage(self, key: str, i: int, text: str) -> Iterator[None]:
        print(f"\n[{i}/{STAGES}] {text}", flush=True)
        t = time.perf_counter()
        yield
        self.seconds[key] = time.perf_counter() - t


def _free_port(preferred: int) -> int:
    """`preferred` if it is free, else (or when it is 0) any free port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_real_patches(shared: str | None = None) -> list[tuple[Path, Path]]:
    """(S2 folder, S1 folder) of the real v1 pairs in ../shared, if present."""
    root = Path(shared or os.environ.get("BIGEARTH_SHARED") or Path.cwd().parent / "shared") / "bigearthnet" / "real"
    s2, s1 = root / "v1" / "BigEarthNet-v1.0", root / "v1" / "BigEarthNet-S1-v1.0"
    if not (s2.is_dir() and s1.is_dir()):
        return []
    pairs = []
    for s1_dir in sorted(p for p in s1.iterdir() if p.is_dir()):
        meta = next(s1_dir.glob("*_labels_metadata.json"), None)
        partner = json.loads(meta.read_text()).get("corresponding_s2_patch") if meta else None
        if partner and (s2 / partner).is_dir():  # the S1 metadata names its S2 patch
            pairs.append((s2 / partner, s1_dir))
    return sorted(pairs)


def demo_config(epochs: int, config: str | Path | None = None, name: str | None = None) -> Any:
    """The demo's `TrainConfig`: `config` (default `configs/tiny-cpu.yaml`, or the file `name` in the same places)
    for `epochs` epochs, no early stop."""
    from bigearth.training.config import load_config

    if config:
        path = Path(config)
        if not path.exists():
            raise FileNotFoundError(f"{path}: the demo's config not found")
    else:
        places = [p.with_name(name) for p in DEMO_CONFIGS] if name else list(DEMO_CONFIGS)
        found = [p for p in places if p.exists()]
        if not found:
            tried = ", ".join(str(p) for p in places)
            raise FileNotFoundError(f"the demo's config: none of {tried} (run it from a checkout, or pass --config)")
        path = found[0]
    return load_config(path, [f"optim.epochs={epochs}", f"run.patience={epochs}"])


def synthesise(w: Workdir, pairs: int, seed: int) -> None:
    """A synthetic archive of `pairs` pairs in the v2 layout with a reference map per pair (kept when already
    there; an archive of an earlier demo without maps is made again)."""
    import shutil

    from bigearth.archive.layouts.v2 import V2_REFERENCE_MAPS_DIR
    from bigearth.synth.archive import synthesize

    if (w.archive / "metadata.parquet").exists():
        if (w.archive / V2_REFERENCE_MAPS_DIR).is_dir():
            print("      already there")
            return
        print("      an earlier archive without reference maps: made again")
        shutil.rmtree(w.archive)
        shutil.rmtree(w.shards, ignore_errors=True)
    synthesize(str(w.archive), layout="v2", pairs=pairs, seed=seed, reference_maps=True)


def ingest_archive(w: Workdir, pairs: int) -> Any:
    """The archive ingested with Ray Data into about 8 shards; the manifest."""
    from bigearth.execution.raycluster import ensure_ray
    from bigearth.ingest.job import ingest

    ensure_ray()
    return ingest(str(w.archive), str(w.shards), shard_size=max(50, pairs // 8))


def train_model(w: Workdir, cfg: Any) -> None:
    from bigearth.training.trainer import train

    train(cfg, str(w.shards), str(w.run.parent), w.run.name)


def evaluate_model(w: Workdir) -> dict[str, Any]:
    """The test split's metrics (and `eval/predictions.parquet`, read by the SDK stage)."""
    from bigearth.evaluation.classification import evaluate

    metrics: dict[str, Any] = evaluate(str(w.run), str(w.shards), "test", str(w.eval))
    print(f"      micro F1 {metrics['micro_f1']:.3f}, macro AP {metrics['macro_ap']:.3f}")
    return metrics


def train_segmenter(w: Workdir, cfg: Any) -> None:
    from bigearth.training.trainer import train

    train(cfg, str(w.shards), str(w.seg_run.parent), w.seg_run.name)


def evaluate_segmenter(w: Workdir) -> dict[str, Any]:
    """The segmentation model's test-split metrics (mIoU, per-class IoU, ...) in `eval-segmentation/`."""
    from bigearth.evaluation.classification import evaluate

    metrics: dict[str, Any] = evaluate(str(w.seg_run), str(w.shards), "test", str(w.seg_eval))
    print(segmentation_line(metrics))
    return metrics


def figure(value: Any) -> float | str:
    """A figure rounded to 3 places for the console and the summary, "n/a" where it is undefined (None: no pixel
    scored)."""
    return "n/a" if value is None else round(float(value), 3)


def segmentation_line(metrics: dict[str, Any]) -> str:
    return (
        f"      mIoU {figure(metrics['miou'])}, pixel accuracy {figure(metrics['pixel_accuracy'])} "
        f"over {metrics['scored_pixels']:,} scored pixels of {metrics['patches']} patches"
    )


def index_archive(w: Workdir) -> None:
    from bigearth.retrieval.indexer import build_index

    built = build_index(str(w.run), str(w.shards), str(w.index), recreate=True)
    print(f"      {built['points_in_collection']} points, vectors {built['vectors']}")


def evaluate_index(w: Workdir) -> dict[str, Any]:
    """Retrieval metrics of test queries against the train split."""
    from bigearth.retrieval.evaluation import evaluate_retrieval

    retrieval: dict[str, Any] = evaluate_retrieval(
        str(w.index), str(w.shards), str(w.retrieval), k=10, queries=200, exact_queries=50
    )
    for mode, v in retrieval["modes"].items():
        print(f"      {mode:7s} mAP@10 {v['map@10']:.3f}  P@10 {v['precision@10']:.3f}  NDCG@10 {v['ndcg@10']:.3f}")
    return retrieval


def start_service(w: Workdir, port: int) -> None:
    """The Serve app on 127.0.0.1:`port` over the demo's run, index and shards."""
    from ray import serve as ray_serve

    from bigearth.serving.app import AppArgs, build

    ray_serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = AppArgs(
        checkpoint=str(w.run),
        index=str(w.index),
        data=str(w.shards),
        segmentation_checkpoint=str(w.seg_run),
        replica_cpus=0.5,
    )
    ray_serve.run(build(args), name="bigearth", route_prefix="/")


def wait_ready(client: Any, url: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not _ready(client):
        if time.time() > deadline:
            raise RuntimeError(f"the service at {url} did not become ready in {timeout:.0f} s")
        time.sleep(1)


def _quicklook(client: Any, images: Path, patch_id: str) -> Path:
    """The pair's RGB quicklook (scale 2) in `images`, fetched once."""
    png = images / f"{patch_id}.png"
    if not png.exists():
        png.write_bytes(client.rgb(patch_id, scale=2))
    return png


def classify_samples(client: Any, preds: list[dict[str, Any]], images: Path) -> list[dict[str, Any]]:
    """Each test pair classified by patch id, beside its true labels and quicklook."""
    samples = []
    for p in preds:
        r = client.classify(patch_id=p["patch_id"])
        png = images / f"{p['patch_id']}.png"
        png.write_bytes(client.rgb(p["patch_id"], scale=2))
        samples.append({"patch_id": p["patch_id"], "true": p["labels"], "pred": r.labels, "png": str(png)})
    print(f"      classified {len(preds)} test pairs by patch id")
    return samples


def search_neighbours(client: Any, preds: list[dict[str, Any]], images: Path) -> list[dict[str, Any]]:
    """The 5 nearest train pairs of each test pair, with the labels they share."""
    queries = []
    for p in preds:
        res = client.search(patch_id=p["patch_id"], k=5, filter={"split": "train"})
        hits = []
        for h in res.hits:
            labels = h.payload["labels"]
            hits.append(
                {
                    "patch_id": h.patch_id,
                    "score": h.score,
                    "labels": labels,
                    "shared": sorted(set(labels) & set(p["labels"])),
                    "png": str(_quicklook(client, images, h.patch_id)),
                }
            )
        png = str(images / f"{p['patch_id']}.png")
        queries.append({"patch_id": p["patch_id"], "labels": p["labels"], "png": png, "hits": hits})
    print(f"      searched the train split for the neighbours of {len(queries)} test pairs")
    return queries


def segment_samples(client: Any, preds: list[dict[str, Any]], images: Path) -> list[dict[str, Any]]:
    """Each test pair segmented by patch id: its quicklook, the predicted map, the archive's reference map and the
    predicted class shares."""
    out = []
    for p in preds:
        pid = p["patch_id"]
        r = client.segment(patch_id=pid)
        predicted, reference = images / f"{pid}.segmentation.png", images / f"{pid}.reference.png"
        predicted.write_bytes(r.png_bytes)
        reference.write_bytes(client.reference_map(pid))
        top = sorted(((c, v) for c, v in r.shares.items() if v > 0), key=lambda kv: -kv[1])[:3]
        out.append(
            {
                "patch_id": pid,
                "png": str(_quicklook(client, images, pid)),
                "predicted_png": str(predicted),
                "reference_png": str(reference),
                "top": top,
            }
        )
    print(f"      segmented {len(out)} test pairs by patch id")
    return out


def classify_real(client: Any, shared: str | None) -> list[dict[str, Any]]:
    """The real pairs of ../shared uploaded as GeoTIFFs and classified (none when it is not there)."""
    real = []
    for s2, s1 in find_real_patches(shared):
        r = client.classify(s2, s1)
        top = sorted(r.probabilities.items(), key=lambda kv: -kv[1])[:3]
        real.append({"name": s2.name, "labels": r.labels, "top": top})
    if real:
        print(f"      classified {len(real)} REAL BigEarthNet pairs uploaded as GeoTIFFs")
    else:
        print("      (no ../shared/bigearthnet/real: skipped the real patches)")
    return real


def call_service(w: Workdir, url: str, samples: int, queries: int, shared: str | None) -> dict[str, Any]:
    """Classify, search and fetch quicklooks through the SDK: the report's samples, queries and real pairs."""
    import pyarrow.parquet as pq

    from bigearth.client import Client

    images = w.report / "images"
    images.mkdir(parents=True, exist_ok=True)
    with Client(url, timeout=120) as c:
        wait_ready(c, url)
        preds = pq.read_table(w.eval / "predictions.parquet").to_pylist()[:samples]
        return {
            "samples": classify_samples(c, preds, images),
            "queries": search_neighbours(c, preds[:queries], images),
            "segmentations": segment_samples(c, preds[:queries], images),
            "real": classify_real(c, shared),
        }


def write_demo_report(
    w: Workdir,
    data: dict[str, Any],
    manifest: Any,
    metrics: dict[str, Any],
    retrieval: dict[str, Any],
    segmentation: dict[str, Any],
    url: str,
    seconds: dict[str, float],
    serve: bool,
) -> tuple[str, dict[str, Any]]:
    """The HTML report (and report.json) from every stage's results; (its path, the summary)."""
    from bigearth.demo.report import write_report

    history = [json.loads(line) for line in (w.run / "metrics.jsonl").read_text().splitlines()]
    summary = {
        "pairs ingested": manifest.pairs,
        "splits": manifest.splits,
        "epochs": len(history),
        "segmentation mIoU (test)": figure(segmentation["miou"]),
        "service": url,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    data.update(
        title="BigEarthNet platform demo",
        summary=summary,
        curves_png=str(w.run / "curves.png"),
        per_class_png=str(w.eval / "per_class.png"),
        by_group_png=str(w.eval / "by_group.png"),
        metrics={k: v for k, v in metrics.items() if k != "class_names"},
        retrieval=retrieval,
        segmentation={k: v for k, v in segmentation.items() if k != "class_names"},
        per_class_iou_png=str(w.seg_eval / "per_class_iou.png"),
        seg_by_group_png=str(w.seg_eval / "by_group.png"),
        history=history,
        explorer=f"{url}/" if serve else None,
    )
    return write_report(str(w.report), data), summary


def keep_serving(url: str) -> None:
    """Block until Ctrl-C while the service runs."""
    print(f"The service keeps running: the explorer page at {url}/, the API at {url}/docs; Ctrl-C stops it.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def run_demo(
    workdir: str = "runs/demo",
    pairs: int = 2000,
    epochs: int = 6,
    seed: int = 0,
    serve: bool = False,
    port: int = 8000,
    shared: str | None = None,
    samples: int = 8,
    queries: int = 3,
    config: str | None = None,
) -> dict[str, Any]:
    """Run every stage in `workdir`; return the summary (also in `workdir/report/report.json`)."""
    from ray import serve as ray_serve

    w = Workdir(Path(workdir).resolve())
    cfg = demo_config(epochs, config)  # before any work: a missing config fails at once
    seg_cfg = demo_config(epochs, name=SEG_CONFIG)
    st = Stages()
    with st.stage("synth", 1, f"synthesising {pairs} pairs in the BigEarthNet v2 layout -> {w.archive}"):
        synthesise(w, pairs, seed)
    with st.stage("ingest", 2, f"ingesting with Ray Data -> {w.shards}"):
        manifest = ingest_archive(w, pairs)
    with st.stage("train", 3, f"training tiny-cpu (late fusion S1+S2) for {epochs} epochs with Ray Train -> {w.run}"):
        train_model(w, cfg)
    with st.stage("evaluate", 4, f"evaluating on the test split -> {w.eval}"):
        metrics = evaluate_model(w)
    with st.stage("index", 5, f"indexing every pair in the embedded vector engine -> {w.index}"):
        index_archive(w)
    with st.stage("retrieval_eval", 6, f"evaluating retrieval (test queries against train) -> {w.retrieval}"):
        retrieval = evaluate_index(w)
    with st.stage("segmentation", 7, f"training and evaluating seg-tiny (S1+S2 land-cover maps) -> {w.seg_run}"):
        train_segmenter(w, seg_cfg)
        segmentation = evaluate_segmenter(w)
    port = _free_port(port)
    url = f"http://127.0.0.1:{port}"
    with st.stage("serve_and_sdk", 8, f"serving with Ray Serve at {url} and calling it through the SDK"):
        start_service(w, port)
        data = call_service(w, url, samples, queries, shared)
    with st.stage("report", 9, f"writing the report -> {w.report / 'report.html'}"):
        page, summary = write_demo_report(w, data, manifest, metrics, retrieval, segmentation, url, st.seconds, serve)
    print(f"\ndemo: done in {time.perf_counter() - st.started:.0f} s. Report: {page}")
    if serve:
        keep_serving(url)
    else:
        keep = f"bigearth demo --workdir {workdir} --serve"
        print(f"To keep the service running (the explorer page at /, the API at /docs): {keep}")
    ray_serve.shutdown()
    return {
        "report": page,
        "summary": summary,
        "metrics": data["metrics"],
        "retrieval": retrieval,
        "segmentation": data["segmentation"],
    }


def _ready(client: Any) -> bool:
    try:
        return bool(client.ready().ready)
    except Exception:  # not up yet: connection refused, 503
        return False
