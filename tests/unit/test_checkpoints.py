"""`bigearth.models.checkpoints`: the typed meta record and its round trip, checkpoints written before the record
(old meta) still load, the saved spec builds the model, loading checks what it loads, a run's latest and best
checkpoints, writing to a URL. Checkpoints here are random-init ones (`helpers.random_checkpoint`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bigearth.models import checkpoints
from bigearth.models.checkpoints import CheckpointError, CheckpointMeta, RunInfo, load
from helpers import random_checkpoint


def test_the_meta_record_round_trips(tmp_path: Path) -> None:
    run = RunInfo(name="r", run_dir="/runs/r", executor="local", world_size=1)
    config = {"tracking": {"tracking_uri": "http://alice:pw-Hunter2@mlflow.example"}, "optim": {"lr": 0.003}}
    path = random_checkpoint(
        tmp_path / "ck", epoch=3, metrics={"epoch": 3, "val_macro_ap": 0.5}, config=config, run=run, note="kept"
    )
    record = checkpoints.read_meta(path)
    assert isinstance(record, CheckpointMeta) and record.run == run and record.epoch == 3
    assert record.metrics == {"epoch": 3, "val_macro_ap": 0.5} and record.model == {"name": "tiny", "fusion": "late"}
    assert record.config is not None and record.config["optim"] == {"lr": 0.003}
    assert "pw-Hunter2" not in (path / checkpoints.META_FILE).read_text()  # credentials masked on the way out
    assert record.spec is not None and record.spec["kwargs"] == {"fusion": "late"} and record.train_state is None
    assert record.model_extra == {"note": "kept"}  # keys the record does not name are kept
    doc = json.loads((path / checkpoints.META_FILE).read_text())
    assert CheckpointMeta.model_validate(doc) == record and record.to_dict() == doc
    assert "source" not in doc and "train_state" not in doc  # fields without a value are left out
    with pytest.raises(CheckpointError, match="model: Input should be a valid dictionary"):
        checkpoints.as_meta({"model": "tiny"})
    (path / checkpoints.META_FILE).write_text(json.dumps({"num_classes": 19}))
    with pytest.raises(CheckpointError, match=r"names no model \(`model.name`\)"):
        load(path)


@pytest.mark.parametrize("writer", ["training", "reben", "bench"])
def test_meta_written_before_the_record_loads(tmp_path: Path, writer: str) -> None:
    """meta.json as the training loop, the reBEN import and bench/serve.py wrote it before `CheckpointMeta`."""
    path = random_checkpoint(tmp_path / "checkpoint_000002")
    spec = json.loads((path / checkpoints.META_FILE).read_text())["spec"]
    model = {"name": "tiny", "fusion": "late"}
    old = {
        "training": {
            "model": model,
            "num_classes": 19,
            "metrics": {"epoch": 2, "val_macro_ap": 0.4},
            "epoch": 2,
            "config": {"model": {"name": "tiny"}},
            "bands": spec["bands"],
            "spec": spec,
        },
        "reben": {"model": model, "num_classes": 19, "metrics": {}, "epoch": None, "source": {"format": "reben"}},
        "bench": {"model": model, "num_classes": 19, "bands": spec["bands"]},
    }[writer]
    (path / checkpoints.META_FILE).write_text(json.dumps(old))
    loaded = load(path, expect_model="tiny", expect_classes=19)
    assert loaded.spec.kwargs == {"fusion": "late"} and loaded.name == "tiny/late"
    assert loaded.record.run is None and loaded.record.train_state is None
    # the document as it was written (the record's defaults filled in: no metrics is none yet)
    assert loaded.meta == {"metrics": {}, **{k: v for k, v in old.items() if v is not None}}
    if writer == "training":
        assert checkpoints.latest(tmp_path) is not None and checkpoints.find_best(tmp_path) == str(path)


def test_the_saved_spec_builds_the_model(tmp_path: Path) -> None:
    """The spec says what was built: a `model` section that disagrees with it does not change the model."""
    path = random_checkpoint(tmp_path / "ck")
    doc = json.loads((path / checkpoints.META_FILE).read_text())
    doc["model"]["fusion"] = "early"
    (path / checkpoints.META_FILE).write_text(json.dumps(doc))
    assert load(path).spec.kwargs["fusion"] == "late"


def test_checkpoint_loading_checks_what_it_loads(tmp_path: Path) -> None:
    run = tmp_path / "run"
    random_checkpoint(run / "checkpoint_000001", epoch=1, metrics={"epoch": 1, "val_macro_ap": 0.3})
    loaded = load(run, expect_model="tiny", expect_classes=19)
    assert loaded.meta["num_classes"] == 19 and not loaded.model.training
    with pytest.raises(CheckpointError, match="holds a 'tiny' model, expected 'late'"):
        load(run, expect_model="late")
    with pytest.raises(CheckpointError, match="trained for 19 classes, expected 43"):
        load(run, expect_classes=43)
    broken = tmp_path / "broken"
    shutil.copytree(Path(checkpoints.find_best(run)), broken)
    meta_doc = json.loads((broken / "meta.json").read_text())
    meta_doc["model"]["fusion"] = meta_doc["spec"]["kwargs"]["fusion"] = "early"  # late-fusion weights, early spec
    (broken / "meta.json").write_text(json.dumps(meta_doc))
    with pytest.raises(CheckpointError, match="weights do not fit model 'tiny'"):
        load(broken)
    with pytest.raises(CheckpointError, match=r"nothing: no checkpoint with val_macro_ap found"):
        load(tmp_path / "nothing")


def test_latest_and_retain_keep_the_best_and_the_latest(tmp_path: Path) -> None:
    for epoch, ap in enumerate([0.5, 0.9, 0.7, 0.6], start=1):
        random_checkpoint(
            tmp_path / f"checkpoint_{epoch:06d}", epoch=epoch, metrics={"epoch": epoch, "val_macro_ap": ap}
        )
    latest = checkpoints.latest(tmp_path)
    assert latest is not None and latest.record.epoch == 4 and latest.path == str(tmp_path / "checkpoint_000004")
    assert checkpoints.retain(tmp_path, keep=2) == ["checkpoint_000001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"checkpoint_{e:06d}" for e in (2, 3, 4)]
    assert checkpoints.find_best(tmp_path) == str(tmp_path / "checkpoint_000002")
    assert checkpoints.latest(tmp_path / "empty") is None


def test_a_checkpoint_written_to_a_url_loads_from_it(tmp_path: Path) -> None:
    """`write` to object storage (fsspec's in-memory one here): uploaded, meta.json last, loaded back."""
    local = random_checkpoint(tmp_path / "ck")
    from bigearth.models.registry import create_model

    url = "memory://bigearth-test/ck"
    net = create_model("tiny", num_classes=19, fusion="late")
    net.load_state_dict(load(local).model.state_dict())
    order: list[str] = []
    checkpoints.write(url, net, checkpoints.read_meta(local), before_commit=lambda: order.append("commit"))
    assert order == ["commit"]
    assert load(url).digest == load(local).digest and load(url).name == "tiny/late"
