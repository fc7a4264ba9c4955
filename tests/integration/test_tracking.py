"""Experiment tracking with MLflow: the session's tiny run in its storage folder's default store (parameters, one
metric point per epoch, the artefacts), an unreachable backend that only warns, credentials never logged. Where a
run is tracked and a backend failing mid-run: tests/unit/test_tracking.py."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bigearth.core.labels import BEN19
from bigearth.training import tracking
from bigearth.training.config import load_config
from helpers import REPO

TINY = str(REPO / "configs" / "tiny-cpu.yaml")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == tracking.__name__ and r.levelno == logging.WARNING]


def test_the_tiny_run_is_tracked_in_its_storage_folder(tiny_run: Path, shards_v2: Path, tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tiny_run.parent}/mlflow.db")
    experiment = client.get_experiment_by_name("bigearth")
    assert experiment is not None
    assert experiment.artifact_location.endswith(str(tiny_run.parent / "mlartifacts"))
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    assert run.data.tags[tracking.RUN_DIR_TAG] == str(tiny_run)
    params = run.data.params
    assert params["model.name"] == "tiny" and params["optim.epochs"] == "2" and params["data.batch_size"] == "16"
    assert params["optim.lr"] == "0.003" and params["model.s2_bands"] == "10" and params["model.backbone"] == "None"
    assert params["shards"] == str(shards_v2) and params["world_size"] == "1" and int(params["train_pairs"]) > 0
    assert not any(k.startswith("tracking.") for k in params)

    history = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "val_loss", "val_micro_ap", "val_macro_ap", "val_micro_f1", "val_macro_f1", "lr"):
        points = client.get_metric_history(run.info.run_id, key)
        assert [(p.step, p.value) for p in points] == [(h["epoch"], pytest.approx(h[key])) for h in history], key

    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "curves.png",
        "metrics.jsonl",
        "per_class.png",
        "metrics.json",
    }
    out = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path)))
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "per_class.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "metrics.jsonl").read_text() == (tiny_run / "metrics.jsonl").read_text()
    last = json.loads((out / "metrics.json").read_text())
    assert last["epoch"] == 2 and last["split"] == "validation" and list(last["per_class"]) == list(BEN19)
    assert last["macro_ap"] == pytest.approx(history[-1]["val_macro_ap"])


def test_an_unreachable_backend_at_start_only_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for k in tracking.DRIVER_HTTP:  # the driver's own bounds, not MLflow's defaults (minutes of retries)
        monkeypatch.delenv(k, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    for uri in (f"http://127.0.0.1:{port}", "nosuchscheme://nowhere"):
        caplog.clear()
        cfg = load_config(TINY, [f"tracking.tracking_uri={uri}"])
        assert tracking.start_run(cfg, "/tmp/unused", "/tmp/unused/x", "x", {}) is None
        (warning,) = _warnings(caplog)
        assert uri in warning and "training goes on without tracking" in warning


def test_credentials_in_tracking_uris_never_reach_the_logs_or_the_parameters(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tracking URI may carry a password (`https://user:pass@host`, a database URL): warnings and prints show it
    masked, the parameters hold no credentials, and the URI rank 0 receives (through Ray Train's config) is Sealed."""
    from bigearth.core.secrets import Sealed

    password = "pw-Hunter2"
    for k in tracking.DRIVER_HTTP:
        monkeypatch.delenv(k, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    cfg = load_config(TINY, [f"tracking.tracking_uri=http://alice:{password}@127.0.0.1:{port}"])
    assert tracking.start_run(cfg, "/tmp/unused", "/tmp/unused/x", "x", {}) is None
    (warning,) = _warnings(caplog)
    assert password not in warning and f"http://alice:***@127.0.0.1:{port}" in warning

    caplog.clear()
    broken = tracking.EpochLogger({"uri": f"nosuchscheme://alice:{password}@nowhere", "run_id": "r"})
    assert broken.finish([], None, "validation") is False
    (warning,) = _warnings(caplog)
    assert password not in warning and "alice:***@nowhere" in warning

    store = os.environ["MLFLOW_TRACKING_URI"]  # the session's SQLite store (conftest)
    cfg = load_config(TINY, [])
    extra = {"shards": f"https://bob:{password}@data.example/shards", "storage": "/tmp/runs"}
    target = tracking.start_run(cfg, "/tmp/runs", "/tmp/runs/secret-test", "secret-test", extra)
    assert target is not None and isinstance(target["uri"], Sealed) and target["uri"].reveal() == store
    params = MlflowClient(store).get_run(target["run_id"]).data.params
    assert params["shards"] == "https://bob:***@data.example/shards" and password not in json.dumps(params)
    assert password not in capsys.readouterr().out
    tracking.end_run(target, "FINISHED")
