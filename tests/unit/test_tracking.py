"""Experiment tracking without a backend: where a run is tracked, and an MLflow backend that fails mid-run, breaks
or hangs only warns and never holds up training. (The tracked tiny run, an unreachable server, credentials: in
tests/integration/test_tracking.py.)"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bigearth.training import tracking
from bigearth.training.config import TrackingConfig, load_config
from helpers import REPO

TINY = str(REPO / "configs" / "tiny-cpu.yaml")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == tracking.__name__ and r.levelno == logging.WARNING]


def test_where_a_run_is_tracked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    default = TrackingConfig()
    assert tracking.resolve_uri(default, str(tmp_path)) == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.resolve_uri(default, "s3://bucket/runs") is None  # no store on object storage without a URI
    assert tracking.resolve_uri(TrackingConfig(mlflow=False), str(tmp_path)) is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.resolve_uri(default, "s3://bucket/runs") == "http://mlflow.example:5000"
    explicit = TrackingConfig(tracking_uri="sqlite:////data/mlflow.db")
    assert tracking.resolve_uri(explicit, str(tmp_path)) == "sqlite:////data/mlflow.db"
    assert tracking.artifact_root("sqlite:////data/mlflow.db") == "/data/mlartifacts"
    assert tracking.artifact_root("http://mlflow.example:5000") is None
    assert tracking.start_run(load_config(TINY, ["tracking.mlflow=false"]), str(tmp_path), "x", "x", {}) is None
    assert tracking.flatten({"a": {"b": [1, 2], "c": None}, "d": "e"}) == {"a.b": "[1, 2]", "a.c": "None", "d": "e"}


class _Flaky:
    """An MLflow client whose backend goes away after the first epoch."""

    calls: ClassVar[list[str]] = []

    def __init__(self, uri: str) -> None:
        pass

    def get_metric_history(self, run_id: str, key: str) -> list[Any]:
        return []

    def log_batch(self, run_id: str, metrics: Any = (), **kw: Any) -> None:
        self.calls.append(f"epoch {metrics[0].step}")
        if len(self.calls) > 1:
            raise ConnectionError("tracking server gone")

    def log_artifacts(self, run_id: str, path: str) -> None:
        self.calls.append("artefacts")


def test_a_backend_failing_mid_run_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("mlflow.tracking.MlflowClient", _Flaky)
    _Flaky.calls = []
    logger = tracking.EpochLogger({"uri": "flaky://", "run_id": "r"})
    for epoch in (1, 2, 3):
        logger.epoch({"epoch": epoch, "train_loss": 0.5, "val_macro_ap": None, "workers": 1})
    history = [{"epoch": e, "train_loss": 0.5, "val_loss": 0.4} for e in (1, 2, 3)]
    assert logger.finish(history, None, "validation") is False
    assert _Flaky.calls == ["epoch 1", "epoch 2"]  # nothing tried after the failure
    (warning,) = _warnings(caplog)
    assert "logging epoch failed (ConnectionError: tracking server gone)" in warning


def test_a_broken_or_hung_backend_never_holds_up_training(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tracking.EpochLogger({"uri": "nosuchscheme://nowhere", "run_id": "r"}, [{"epoch": 1, "train_loss": 1.0}])
    broken.epoch({"epoch": 2, "train_loss": 0.9})
    assert broken.finish([], None, "validation") is False
    assert len(_warnings(caplog)) == 1

    caplog.clear()
    release = threading.Event()

    class Hung(_Flaky):
        def log_batch(self, run_id: str, metrics: Any = (), **kw: Any) -> None:
            release.wait()

    monkeypatch.setattr("mlflow.tracking.MlflowClient", Hung)
    try:
        hung = tracking.EpochLogger({"uri": "hung://", "run_id": "r"})
        for epoch in (1, 2, 3):  # returns at once although the backend never answers
            hung.epoch({"epoch": epoch, "train_loss": 0.5})
        assert hung.finish([], None, "validation", timeout=0.2) is False
        (warning,) = _warnings(caplog)
        assert "still busy after" in warning
    finally:
        release.set()


def test_the_drivers_calls_are_bounded_unless_the_environment_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    with tracking.driver_http():
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == tracking.DRIVER_HTTP["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"
