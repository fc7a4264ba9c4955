"""Experiment tracking with MLflow: the driver opens one MLflow run per run folder (the same one again when a run
resumes) and logs the parameters; rank 0 logs the metrics of every epoch (step = epoch) and, at the end, the
artefacts: `curves.png`, `metrics.jsonl`, and the last validation's `per_class.png` and `metrics.json`.

Rank 0 hands everything to a daemon thread, so training never waits on the backend (an MLflow server that stops
answering is retried by MLflow for minutes per call); the first error is logged as one warning and tracking stops
there, and training goes on (the run folder keeps `metrics.jsonl` and `curves.png` whatever happens).

The store: `tracking.tracking_uri`, else `MLFLOW_TRACKING_URI`, else for a local storage folder
`sqlite:///<storage>/mlflow.db` with the artefacts in `<storage>/mlartifacts`: MLflow 3's own default backend,
without a server (its file store `./mlruns` is in maintenance mode: it refuses to open unless
MLFLOW_ALLOW_FILE_STORE=true). Object storage without a URI is not tracked (a SQLite file cannot live there, and a
driver's or worker's own folder is gone with its pod). mlflow is imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import numbers
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from bigearth.core.secrets import Sealed, redact, redact_text, redact_url, reveal
from bigearth.training.config import TrackingConfig, TrainConfig

log = logging.getLogger(__name__)

#: The tag that ties an MLflow run to its run folder: a re-run of the same folder (a resume) continues that run.
RUN_DIR_TAG = "bigearth.run_dir"
#: Seconds the end of training waits for rank 0's tracking thread to send what is left.
FLUSH_S = 60.0
#: The metric whose steps tell which epochs a run already has.
STEP_KEY = "train_loss"
#: The driver's calls to a tracking server (opening and ending the run) give up soon: MLflow's own defaults (7
#: retries with back-off, 120 s a request) would hold the start of training for minutes when the server is down.
#: A variable set in the environment wins.
DRIVER_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
_PARAM_CHARS = 6000  # MLflow's limit on a parameter value
_BATCH = 100  # MLflow's limit on parameters per log_batch


def resolve_uri(cfg: TrackingConfig, storage: str) -> str | None:
    """The tracking URI of a run stored under `storage`, or None when it is not tracked."""
    if not cfg.mlflow:
        return None
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if "://" in storage:
        return None
    return "sqlite:///" + os.path.join(os.path.abspath(storage), "mlflow.db")


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artefacts: `mlartifacts/` beside a SQLite file (MLflow's own default would
    be `./mlruns` in the current folder of whichever process creates it); the server's choice otherwise."""
    if uri.startswith("sqlite:///"):
        return os.path.join(os.path.dirname(os.path.abspath(uri[len("sqlite:///") :])), "mlartifacts")
    return None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config sections as MLflow parameters: `optim.lr` -> "0.001"; lists and mappings as JSON."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, list | dict) else value
            out[f"{prefix}{key}"] = str(text)[:_PARAM_CHARS]
    return out


def _warn(what: str, error: BaseException) -> None:
    log.warning(
        "MLflow tracking %s failed (%s: %s); training goes on without tracking (the run folder keeps metrics.jsonl "
        "and curves.png)",
        redact_text(what),
        type(error).__name__,
        redact_text(str(error)),  # MLflow's errors name the URI, credentials included
    )


@contextlib.contextmanager
def driver_http() -> Iterator[None]:
    """`DRIVER_HTTP` in the environment for the block (what is already set is kept), then as it was."""
    added = {k: v for k, v in DRIVER_HTTP.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def start_run(cfg: TrainConfig, storage: str, run_dir: str, name: str, extra: dict[str, Any]) -> dict[str, Any] | None:
    """On the driver, before training: the MLflow run of `run_dir` (found by its tag on a resume, else created) with
    the flattened config and `extra` as parameters (credentials masked, the tracking URI left out). Returns what
    rank 0 needs (`uri`, `Sealed`: it travels to the workers in Ray Train's config; `run_id`), or None when the run
    is not tracked, or when the backend fails (one warning; training is never refused for it)."""
    uri = resolve_uri(cfg.tracking, storage)
    if uri is None:
        if cfg.tracking.mlflow:
            print(
                f"mlflow: not tracked: {redact_url(storage)} is object storage and no tracking.tracking_uri or "
                "MLFLOW_TRACKING_URI is set (metrics.jsonl and curves.png are in the run folder)"
            )
        return None
    try:
        with driver_http():
            target = _open(uri, cfg, run_dir, name, extra)
        return {**target, "uri": Sealed(uri)}
    except Exception as e:
        _warn(f"at {uri}", e)
        return None


def _open(uri: str, cfg: TrainConfig, run_dir: str, name: str, extra: dict[str, Any]) -> dict[str, str]:
    from mlflow.entities import Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(cfg.tracking.experiment, artifact_location=artifact_root(uri))
        except MlflowException:  # created meanwhile by another run
            experiment = client.get_experiment_by_name(cfg.tracking.experiment)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    else:
        experiment_id = experiment.experiment_id
    params = flatten(redact({k: v for k, v in cfg.model_dump().items() if k != "tracking"}))
    params.update(flatten(redact(extra)))
    found: list[Any] = []
    if "'" not in run_dir:  # (a quote would end the filter's string)
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{RUN_DIR_TAG}` = '{run_dir}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
    tags: list[RunTag] = []
    if found:  # a resume: MLflow parameters cannot change, so new values of old keys become tags
        run = found[0]
        client.update_run(run.info.run_id, status="RUNNING")
        old = run.data.params
        changed = {k: v for k, v in params.items() if k in old and old[k] != v}
        tags = [RunTag(f"resumed.{k}", v) for k, v in changed.items()]
        params = {k: v for k, v in params.items() if k not in old}
        said = ", ".join(f"{k} {old[k]} -> {v}" for k, v in changed.items())
        print(f"mlflow: resuming run {run.info.run_id}" + (f" (changed, as resumed.* tags: {said})" if said else ""))
    else:
        run = client.create_run(experiment_id, run_name=name, tags={RUN_DIR_TAG: run_dir})
        print(f"mlflow: run {run.info.run_id} in experiment {cfg.tracking.experiment!r} at {redact_url(uri)}")
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, max(len(items), len(tags)), _BATCH):
        client.log_batch(run.info.run_id, params=items[i : i + _BATCH], tags=tags[i : i + _BATCH])
    return {"uri": uri, "run_id": run.info.run_id}


def end_run(target: dict[str, Any] | None, status: str) -> None:
    """On the driver, after training: mark the run FINISHED, FAILED or KILLED (a failure only warns)."""
    if not target:
        return
    try:
        from mlflow.tracking import MlflowClient

        with driver_http():
            MlflowClient(reveal(target["uri"])).set_terminated(target["run_id"], status)
    except Exception as e:
        _warn("ending the run", e)


def artefacts(history: list[dict[str, Any]], scores: dict[str, Any] | None, split: str) -> dict[str, bytes]:
    """The files logged at the end: the curves and the epochs, and, when this attempt validated, the last
    validation's per-class chart and full scores (per class included)."""
    from bigearth.metrics.charts import per_class_chart, plot_curves

    files: dict[str, bytes] = {}
    if history:
        files["curves.png"] = plot_curves(history)
        files["metrics.jsonl"] = "".join(json.dumps(h) + "\n" for h in history).encode()
    if scores is not None:
        last = {"split": split, "epoch": history[-1]["epoch"] if history else None, **scores}
        if "per_class_iou" in scores:  # a segmentation model's: IoU per class
            from bigearth.metrics.segmentation_charts import per_class_iou_chart

            files["per_class.png"] = per_class_iou_chart(last)
        else:
            files["per_class.png"] = per_class_chart(last)
        files["metrics.json"] = json.dumps(last, indent=1).encode()
    return files


class EpochLogger:
    """Rank 0's side: `epoch(metrics)` after every epoch, `finish(...)` at the end. A daemon thread sends; epochs
    the run already has (a resume, a restart after a worker loss) are skipped, missing ones are filled in from
    `history`. The first error is one warning, then everything else is dropped."""

    def __init__(self, target: dict[str, Any], history: Iterable[dict[str, Any]] = ()) -> None:
        self.target = target
        self.failed = False
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._send, name="bigearth-mlflow", daemon=True)
        self._thread.start()
        for h in history:
            self.epoch(h)

    def epoch(self, metrics: dict[str, Any]) -> None:
        self._queue.put(("epoch", dict(metrics)))

    def finish(
        self, history: list[dict[str, Any]], scores: dict[str, Any] | None, split: str, timeout: float = FLUSH_S
    ) -> bool:
        """Log the artefacts and wait (at most `timeout` s) for the thread; True when everything was sent."""
        if not self.failed:
            try:  # drawn here: pyplot is not for two threads
                files = artefacts(history, scores, split)
                if files:
                    self._queue.put(("files", files))
            except Exception as e:
                self._fail("drawing the artefacts", e)
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._fail(f"sending (still busy after {timeout:.0f} s)", TimeoutError("the rest is dropped"))
        return not self.failed

    def _fail(self, what: str, error: BaseException) -> None:
        if not self.failed:
            self.failed = True
            _warn(what, error)

    def _send(self) -> None:
        client: Any = None
        logged: set[int] = set()
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(reveal(self.target["uri"]))
            logged = {m.step for m in client.get_metric_history(self.target["run_id"], STEP_KEY)}
        except Exception as e:
            self._fail(f"at {reveal(self.target.get('uri'))}", e)
        while (item := self._queue.get()) is not None:
            if self.failed:
                continue  # drain: finish() waits for the end marker
            kind, payload = item
            try:
                if kind == "epoch":
                    step = int(payload["epoch"])
                    if step not in logged:
                        self._log_epoch(client, payload, step)
                        logged.add(step)
                else:
                    with tempfile.TemporaryDirectory() as tmp:
                        for name, data in payload.items():
                            with open(os.path.join(tmp, name), "wb") as f:
                                f.write(data)
                        client.log_artifacts(self.target["run_id"], tmp)
            except Exception as e:
                self._fail(f"logging {kind}", e)

    def _log_epoch(self, client: Any, metrics: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if k != "epoch" and isinstance(v, numbers.Real) and not isinstance(v, bool)
        ]
        client.log_batch(self.target["run_id"], metrics=batch)
