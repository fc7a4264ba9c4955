"""Checkpoints: what a checkpoint folder holds, which one of a run is best, and every read and write of one, in
one place (training's checkpoints and resume, the reBEN import, evaluation, indexing and serving all come here).

A checkpoint folder holds `model.pt` (the state dict), `meta.json` (a `CheckpointMeta`: the model's builder
arguments and its `spec`, the epoch and its metrics, the training config, the run) and, written by training,
`train_state.pt` (optimizer, scheduler, loop). `meta.json` is written last and whole: it is what makes a folder a
checkpoint. `resolve(url)` finds the best checkpoint of a run (or takes a checkpoint folder as is) and reads its
meta: cheap, for a driver. `load(url or Checkpoint)` reads the weights once, builds the model from the saved spec
and gives a `LoadedModel` (model, spec, meta, path, digest) that evaluation, indexing and serving share.
`write(url, ...)` writes a folder on local or object storage; `latest(run)` and `read_train_state(folder)` are
what a resumed run starts from; `retain(run, keep)` drops all but the best and the latest.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bigearth.core.records import RecordError, read_json, write_bytes_atomic, write_json_atomic
from bigearth.core.secrets import redact
from bigearth.core.storage import StorageOptions, join, open_fs
from bigearth.models.base import BigEarthModel, ModelSpec
from bigearth.models.registry import create_model

MODEL_FILE, STATE_FILE, META_FILE = "model.pt", "train_state.pt", "meta.json"
#: The folders of a run's checkpoints (Ray Train's and the local executor's both match it).
CHECKPOINT_GLOB = "checkpoint_*"

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model asked for."""


class RunInfo(BaseModel):
    """The run a training checkpoint belongs to (absent from imported checkpoints and from those written before
    it was recorded)."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    run_dir: str | None = None
    executor: str | None = None  # ray | local
    world_size: int | None = None


class CheckpointMeta(BaseModel):
    """`meta.json`: what a checkpoint is. Every field has a default, so the meta of any checkpoint the platform ever
    wrote reads as this record; keys it does not name are kept (`extra`). The model is built from `spec`, else from
    `model` (`builder`)."""

    model_config = ConfigDict(extra="allow")

    model: dict[str, Any] = Field(
        default_factory=dict, description="registry name (`name`) and builder arguments, as configured"
    )
    num_classes: int = 19
    spec: dict[str, Any] | None = Field(None, description="`ModelSpec.to_dict()` of the saved model")
    epoch: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] | None = Field(None, description="the training config (credentials masked)")
    bands: list[str] | None = None
    run: RunInfo | None = None
    train_state: str | None = Field(None, description="file of the optimizer, scheduler and loop state, if any")
    source: dict[str, Any] | None = Field(None, description="where an imported checkpoint came from")

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (fields without a value left out, as older checkpoints wrote them)."""
        return self.model_dump(mode="json", exclude_none=True)

    @property
    def builder(self) -> tuple[str, int, dict[str, Any]]:
        """(registry name, classes, builder arguments) of the saved model: its `spec` when saved (what was
        built), else the `model` section; `pretrained` is never read again (the weights replace it)."""
        if self.spec and self.spec.get("name"):
            name, classes, kwargs = self.spec["name"], int(self.spec["num_classes"]), dict(self.spec.get("kwargs", {}))
        else:
            if "name" not in self.model:
                raise CheckpointError("the checkpoint's meta names no model (`model.name`)")
            name, classes = self.model["name"], self.num_classes
            kwargs = {k: v for k, v in self.model.items() if k != "name"}
        return str(name), classes, {k: v for k, v in kwargs.items() if k not in ("pretrained", "num_classes")}

    @property
    def model_name(self) -> str:
        return self.builder[0]

    @property
    def classes(self) -> int:
        return self.builder[1]


def as_meta(meta: CheckpointMeta | Mapping[str, Any]) -> CheckpointMeta:
    """A meta document (or record) as the typed record; a document that is not one is a `CheckpointError`."""
    if isinstance(meta, CheckpointMeta):
        return meta
    try:
        return CheckpointMeta.model_validate(dict(meta))
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise CheckpointError(f"not a checkpoint's meta: {problems}") from None


def display_name(meta: CheckpointMeta | Mapping[str, Any]) -> str:
    """`late`, or `tiny/late` for a model built with a fusion argument: what a service and the CLI call it."""
    name, _, kwargs = as_meta(meta).builder
    return name + (f"/{kwargs['fusion']}" if "fusion" in kwargs else "")


@dataclass(frozen=True)
class Checkpoint:
    """A resolved checkpoint folder (local path or URL) and its meta record, weights not read."""

    path: str
    record: CheckpointMeta

    @cached_property
    def meta(self) -> dict[str, Any]:
        """The meta as a JSON document (`record.to_dict()`)."""
        return self.record.to_dict()

    @cached_property
    def spec(self) -> ModelSpec:
        """The model's spec; checkpoints written before specs were saved get it by building the model (no
        weights)."""
        if self.record.spec:
            return ModelSpec.from_dict(self.record.spec)
        return build(self.record).spec

    @property
    def name(self) -> str:
        return display_name(self.record)


@dataclass
class LoadedModel:
    """A checkpoint loaded once: the model (eval mode, on the CPU), its spec and meta, where it came from, and the
    first 12 hex digits of the sha256 of its weights file."""

    model: BigEarthModel
    spec: ModelSpec
    record: CheckpointMeta
    path: str
    digest: str

    @cached_property
    def meta(self) -> dict[str, Any]:
        return self.record.to_dict()

    @property
    def name(self) -> str:
        return display_name(self.record)

    @property
    def version(self) -> str:
        """`<run>/<checkpoint>@<digest>`: names the weights a service answers with."""
        parts = self.path.rstrip("/").rsplit("/", 2)
        return f"{parts[-2]}/{parts[-1]}@{self.digest}" if len(parts) >= 2 else f"{parts[-1]}@{self.digest}"


def save(
    directory: str,
    model: BigEarthModel,
    meta: CheckpointMeta | Mapping[str, Any],
    train_state: dict[str, Any] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> CheckpointMeta:
    """Write a checkpoint folder on the local disk; the model's spec (and the train state's file) go into the
    meta, credentials are masked (`bigearth.core.secrets`). `before_commit` runs right before `meta.json`, the
    write that makes the folder a checkpoint. Returns the meta written."""
    os.makedirs(directory, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(directory, MODEL_FILE))
    update: dict[str, Any] = {"spec": model.spec.to_dict()}
    if train_state is not None:
        torch.save(train_state, os.path.join(directory, STATE_FILE))
        update["train_state"] = STATE_FILE
    # no credentials (a tracking URI's password) in the folder
    record = as_meta(redact({**as_meta(meta).to_dict(), **update}))
    if before_commit is not None:
        before_commit()
    # meta.json last and whole (temporary name, then rename): it is what marks a folder as a checkpoint
    write_json_atomic(None, os.path.join(directory, META_FILE), record.to_dict(), indent=1)
    return record


def write(
    url: str,
    model: BigEarthModel,
    meta: CheckpointMeta | Mapping[str, Any],
    train_state: dict[str, Any] | None = None,
    storage: StorageOptions | None = None,
    before_commit: Callable[[], None] | None = None,
) -> CheckpointMeta:
    """`save` to a local folder or a URL (written locally, then uploaded with `meta.json` last and whole)."""
    if "://" not in url:
        return save(url, model, meta, train_state, before_commit)
    with tempfile.TemporaryDirectory() as tmp:
        record = save(tmp, model, meta, train_state)
        copy(tmp, url, storage, before_commit)
    return record


def copy(directory: str, url: str, storage: StorageOptions | None = None, before_commit: Any = None) -> None:
    """Copy a local checkpoint folder to `url` (local or object storage), `meta.json` last and whole."""
    fs, root = open_fs(url, storage)
    fs.makedirs(root, exist_ok=True)
    for name in sorted(os.listdir(directory)):
        if name != META_FILE:
            fs.put_file(os.path.join(directory, name), join(root, name))
    if before_commit is not None:
        before_commit()
    with open(os.path.join(directory, META_FILE), "rb") as f:
        write_bytes_atomic(fs, join(root, META_FILE), f.read())


def read_meta(directory: str | Path, storage: StorageOptions | None = None) -> CheckpointMeta:
    """The meta record of a checkpoint folder (local path or URL)."""
    fs, root = open_fs(str(directory), storage)
    path = join(root, META_FILE)
    if not fs.exists(path):
        _refuse_foreign(fs, root, str(directory))
        raise CheckpointError(f"{directory}: not a bigearth checkpoint (no {META_FILE})")
    try:
        doc = read_json(fs, path, "checkpoint's meta")
    except RecordError as e:
        raise CheckpointError(f"{e}: this checkpoint cannot be used; take another of its run") from None
    try:
        return as_meta(doc)
    except CheckpointError as e:
        raise CheckpointError(f"{directory}/{META_FILE}: {e}") from None


def read_train_state(
    directory: str | Path, device: Any = "cpu", storage: StorageOptions | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model state dict, train state: optimizer, scheduler, loop) of a training checkpoint, for a resume."""
    fs, root = open_fs(str(directory), storage)
    loaded = []
    for name in (MODEL_FILE, STATE_FILE):
        try:
            raw = fs.cat(join(root, name))
        except FileNotFoundError:
            raise CheckpointError(f"{directory}: no {name} (not a training checkpoint to resume from)") from None
        loaded.append(torch.load(io.BytesIO(raw), map_location=device, weights_only=True))
    return loaded[0], loaded[1]


def _refuse_foreign(fs: Any, root: str, url: str) -> None:
    if fs.exists(join(root, "config.json")) and fs.exists(join(root, "model.safetensors")):
        raise CheckpointError(
            f"{url}: a reBEN (ConfigILM) checkpoint, not a bigearth one: import it first with "
            f"`bigearth import-reben {url} OUT` (bigearth.models.reben)"
        )


def _scan(run_dir: str | Path, storage: StorageOptions | None) -> list[tuple[str, dict[str, Any]]]:
    """(checkpoint folder name, meta document) of every readable checkpoint of a run, in name order."""
    fs, root = open_fs(str(run_dir), storage)
    found = []
    for meta_path in sorted(fs.glob(join(root, CHECKPOINT_GLOB, META_FILE))):
        try:
            found.append((meta_path.rsplit("/", 2)[-2], read_json(fs, meta_path, "checkpoint's meta")))
        except RecordError as e:  # one damaged checkpoint does not hide the run's others
            logger.warning("%s: this checkpoint is skipped", e)
    return found


def _child(url: str, name: str) -> str:
    return url.rstrip("/") + "/" + name if "://" in url else os.path.join(url, name)


#: the epoch metric that ranks a run's checkpoints (`val_macro_ap` of a classifier, `val_miou` of a segmentation
#: model); checkpoints written before it ranked by `val_macro_ap`, which they are read by
SCORE = "val_score"


def _score(doc: Mapping[str, Any], metric: str) -> Any:
    metrics = doc.get("metrics", {})
    value = metrics.get(metric)
    return metrics.get("val_macro_ap") if value is None and metric == SCORE else value


def find_best(run_dir: str | Path, metric: str = SCORE, storage: StorageOptions | None = None) -> str:
    """The checkpoint folder (path or URL) of a run with the highest `metric`; a checkpoint folder is returned as
    is."""
    url = str(run_dir)
    fs, root = open_fs(url, storage)
    if fs.exists(join(root, META_FILE)):
        return url
    scored = [(_score(doc, metric), name) for name, doc in _scan(url, storage)]
    scored = [(value, name) for value, name in scored if value is not None]
    if not scored:
        _refuse_foreign(fs, root, url)
        wanted = "val_macro_ap found, nor with val_score" if metric == SCORE else f"{metric} found"
        raise CheckpointError(f"{run_dir}: no checkpoint with {wanted} (expected checkpoint_*/{META_FILE})")
    return _child(url, max(scored)[1])


def latest(run_dir: str | Path, storage: StorageOptions | None = None) -> Checkpoint | None:
    """The training checkpoint of a run with the highest epoch (what a re-run resumes from), or None."""
    url = str(run_dir)
    found = [(int(doc["epoch"]), name, doc) for name, doc in _scan(url, storage) if doc.get("epoch") is not None]
    if not found:
        return None
    _, name, doc = max(found, key=lambda f: f[:2])
    return Checkpoint(_child(url, name), as_meta(doc))


def retain(run_dir: str | Path, keep: int, metric: str = SCORE, storage: StorageOptions | None = None) -> list[str]:
    """Delete a run's checkpoints but the `keep` best by `metric` and the latest (Ray Train's `CheckpointConfig`
    rule); return the folders deleted."""
    url = str(run_dir)
    found = [(name, doc) for name, doc in _scan(url, storage) if doc.get("epoch") is not None]
    if not found:
        return []
    newest = max(found, key=lambda f: (int(f[1]["epoch"]), f[0]))[0]
    ranked = sorted(found, key=lambda f: _score(f[1], metric) or 0.0, reverse=True)
    kept = {name for name, _ in ranked[:keep]} | {newest}
    fs, root = open_fs(url, storage)
    gone = []
    for name, _ in found:
        if name not in kept:
            fs.rm(join(root, name), recursive=True)
            gone.append(name)
    return gone


def resolve(
    checkpoint: str | Path | Checkpoint,
    *,
    expect_model: str | None = None,
    expect_classes: int | None = None,
    storage: StorageOptions | None = None,
) -> Checkpoint:
    """The best checkpoint of a run (or a checkpoint folder) and its meta, checked against what is expected."""
    if isinstance(checkpoint, Checkpoint):
        ref = checkpoint
    else:
        directory = find_best(checkpoint, storage=storage)
        ref = Checkpoint(directory, read_meta(directory, storage))
    name, classes, _ = ref.record.builder
    if expect_model is not None and expect_model != name:
        raise CheckpointError(f"{ref.path}: holds a {name!r} model, expected {expect_model!r}")
    if expect_classes is not None and expect_classes != classes:
        raise CheckpointError(f"{ref.path}: trained for {classes} classes, expected {expect_classes}")
    return ref


def build(meta: CheckpointMeta | Mapping[str, Any]) -> BigEarthModel:
    """The (untrained) model a checkpoint's meta describes: built from its saved spec (the `model` section for
    checkpoints older than specs); `pretrained` is not read again: the checkpoint's weights replace it."""
    name, classes, kwargs = as_meta(meta).builder
    model: Any = create_model(name, num_classes=classes, **kwargs)
    if not isinstance(model, BigEarthModel):
        raise CheckpointError(f"model {name!r} is not a BigEarthModel (bigearth.models.base)")
    return model


def load(
    checkpoint: str | Path | Checkpoint,
    *,
    expect_model: str | None = None,
    expect_classes: int | None = None,
    storage: StorageOptions | None = None,
) -> LoadedModel:
    """Resolve (unless given a `Checkpoint`), read the weights once (`weights_only=True`), build and load the
    model; local path or URL."""
    ref = resolve(checkpoint, expect_model=expect_model, expect_classes=expect_classes, storage=storage)
    model = build(ref.record)
    fs, root = open_fs(ref.path, storage)
    try:
        raw = fs.cat(join(root, MODEL_FILE))
    except FileNotFoundError:
        raise CheckpointError(f"{ref.path}: no {MODEL_FILE}") from None
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(f"{ref.path}/{MODEL_FILE}: unreadable weights ({type(e).__name__}: {e})"[:400]) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"{ref.path}: weights do not fit model {ref.record.model_name!r}: {str(e)[:300]}"
        ) from None
    model.eval()
    return LoadedModel(model, model.spec, ref.record, ref.path, digest_of([raw]))


def digest_of(chunks: Any) -> str:
    """The first 12 hex digits of the sha256 of the weights' bytes, given in pieces: what `LoadedModel.digest`
    says and an index records as `checkpoint_digest`."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()[:12]


def weights_digest(checkpoint: str, storage: StorageOptions | None = None) -> str:
    """`LoadedModel.digest` of a checkpoint folder without loading the model (its weights read in 4 MiB pieces)."""
    fs, root = open_fs(checkpoint, storage)
    try:
        with fs.open(join(root, MODEL_FILE), "rb") as f:
            return digest_of(iter(lambda: f.read(1 << 22), b""))
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint}: no {MODEL_FILE}") from None
