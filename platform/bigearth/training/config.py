"""Typed training configuration: YAML files in configs/ parsed into pydantic models; `--set a.b=value` overrides.

Unknown keys are errors that name the key (`optim.lrr: Extra inputs are not permitted`), so a typo never
silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bigearth.models.align import AlignConfig
from bigearth.shards.subsets import MetadataSubset, SeasonFilter, ValueFilter


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    """Which model to build (`bigearth.models.registry`) and its input."""

    name: str = Field(
        "late",
        description="registered model: early, late, s1, s2, tiny; segmentation: seg-early, seg-late, seg-s1, seg-s2, "
        "seg-tiny (bigearth.models.segmentation)",
    )
    backbone: str | None = Field(None, description="timm model name (resnet18, resnet50, ...)")
    fusion: str | None = Field(None, description="tiny and seg-tiny only: early, late, s1 or s2")
    s2_bands: Literal[10, 12] | None = Field(None, description="Sentinel-2 bands: 10 (no B01/B09) or 12")
    bands: list[str] | None = Field(
        None, description="early/s1/s2: an explicit channel order (e.g. the v1 models': S2 first), instead of s2_bands"
    )
    stats: str = Field(
        "v2",
        description="normalisation statistics (bigearth.core.bands.STATS): v2, v1 (native size), v2-120-nearest, "
        "v2-120-bilinear (ConfigILM's, after resampling to 120 px)",
    )
    pretrained: str | None = Field(None, description="state dict of the backbone: local file or URL")
    drop_rate: float | None = Field(None, ge=0, lt=1, description="dropout before the head")
    drop_path_rate: float | None = Field(None, ge=0, lt=1, description="stochastic depth of the timm backbone")
    img_size: int | None = Field(None, ge=16, description="side the stem resamples every band to (default 120)")
    resample: Literal["nearest", "bilinear", "bicubic"] | None = Field(
        None, description="how the stem resamples the 20 m / 60 m bands to img_size (default bilinear)"
    )
    decoder_channels: int | None = Field(
        None, ge=1, description="segmentation models: channels of the FPN decoder (default 128; seg-tiny 32)"
    )


class DataConfig(_Strict):
    """The input pipeline: `worker` (`bigearth.input.loader`: row groups streamed into each worker) or `ray_data`
    (`bigearth.input.raybatches`: batches collated in Ray Data tasks on any node, streamed to the workers)."""

    pipeline: Literal["worker", "ray_data"] = Field(
        "worker",
        description="training input: worker (each Ray Train worker reads and collates its share with reader_threads "
        "of its own node's cores) or ray_data (Ray Data tasks, 1 CPU each on any node, CPU-only nodes included, read "
        "and collate the batches; each worker receives them through its dataset shard; validation stays on the "
        "worker path; the local executor falls back to worker)",
    )
    batch_size: int = Field(256, ge=1, description="per worker (ignored when global_batch_size is set)")
    global_batch_size: int | None = Field(
        None, ge=1, description="pairs per optimizer step over all workers; must divide by scaling.num_workers"
    )
    augment: Literal["none", "flips"] = Field(
        "none", description="flips: random left-right and top-bottom flips per pair, on the device"
    )
    local_shuffle_buffer: int = Field(2048, ge=0, description="rows in each worker's shuffle buffer (0 = off)")
    reader_threads: int = Field(
        2, ge=1, description="threads per worker reading and decompressing row groups (about one per core)"
    )
    nomenclature: Literal[19, 43] = Field(19, description="label nomenclature; 43 needs shards ingested from v1")
    train_split: str = Field("train", description="split trained on")
    val_split: str = Field("validation", description="split for validation metrics, early stopping, best checkpoint")
    countries: ValueFilter | None = Field(
        None,
        description="train and validate on pairs of some countries only: {include: [Austria, ...]} or {exclude: "
        "[Portugal]} (the shards' country column; a filter that selects nothing is an error naming it)",
    )
    seasons: SeasonFilter | None = Field(
        None,
        description="train and validate on pairs of some seasons only: {include: [...]} or {exclude: [...]} of "
        "winter (Dec-Feb), spring, summer, autumn (the month of the Sentinel-2 acquisition)",
    )

    def subset(self) -> MetadataSubset:
        """The metadata subset of `countries` and `seasons` (`bigearth.shards.subsets`; inactive when both are None)."""
        return MetadataSubset(countries=self.countries, seasons=self.seasons)


class OptimConfig(_Strict):
    """AdamW with linear warm-up and cosine decay (per step), bf16 autocast on GPUs unless `precision: fp32`."""

    epochs: int = Field(20, ge=1, description="maximum epochs (early stopping may end sooner)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate of AdamW")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up, then cosine decay (per batch)")
    warmup_steps: int | None = Field(None, ge=0, description="warm-up in optimizer steps (instead of warmup_epochs)")
    warmup_start: float = Field(0.0, ge=0, le=1, description="learning rate the warm-up starts from, as a share of lr")
    final_lr: float = Field(0.0, ge=0, le=1, description="learning rate the cosine ends at, as a share of lr")
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm (0 = off)")
    precision: Literal["bf16", "fp32"] = Field(
        "bf16",
        description="on GPUs: bf16 autocast, or fp32 weights and activations with reduced-precision matmuls "
        "(torch.set_float32_matmul_precision('medium'), as reBEN)",
    )


class ScalingConfig(_Strict):
    """Ray Train workers (data-parallel DDP)."""

    num_workers: int = Field(1, ge=1, description="training workers (one GPU each with use_gpu)")
    use_gpu: bool = Field(False, description="a GPU per worker")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per worker")
    sync_batchnorm: bool = Field(
        False,
        description="GPU workers: BatchNorm statistics over the global batch (SyncBatchNorm), not each worker's share",
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="STRICT_SPREAD puts every worker on a different node"
    )


class RunConfig(_Strict):
    """Reproducibility, early stopping, fault tolerance, checkpoint retention."""

    seed: int = Field(0, description="seeds torch, numpy and the shuffles")
    patience: int = Field(
        5,
        ge=1,
        description="early stopping: epochs without a better val_score (val macro AP; mIoU of a segmentation model)",
    )
    max_failures: int = Field(3, ge=0, description="worker-group restarts after a worker or node loss")
    keep_checkpoints: int = Field(2, ge=1, description="best checkpoints kept by val_score (+ the latest)")


_ALIGN = AlignConfig()  # the model's defaults (bigearth.models.align), but `aligned` when training


class RetrievalConfig(_Strict):
    """The vectors written to an index (`bigearth.models.align`): `aligned` trains projection heads that map S1 and
    S2 into one space (models with an encoder per modality); `logits` keeps each modality's share of the class
    logits."""

    cross_modal: Literal["aligned", "logits"] = Field(
        "aligned", description="s1/s2 vectors: aligned (one S1/S2 space, contrastive) or logits (label space)"
    )
    dim: int = Field(_ALIGN.dim, ge=8, le=4096, description="size of the aligned s1/s2 vectors")
    temperature: float = Field(_ALIGN.temperature, gt=0, le=1, description="contrastive temperature")
    label_positives: float = Field(
        _ALIGN.label_positives,
        ge=0,
        le=1,
        description="share of each pair's target spread over pairs with shared labels (Jaccard)",
    )
    intra: float = Field(_ALIGN.intra, ge=0, description="weight of the same-modality term (S1-S1, S2-S2)")
    weight: float = Field(
        _ALIGN.weight, gt=0, description="weight of the alignment loss beside the classification loss"
    )
    encoders: Literal["none", "s1", "both"] = Field(
        _ALIGN.encoders,  # type: ignore[arg-type]
        description="encoders the alignment loss trains besides the projection heads (s1: S2 as the teacher)",
    )


class TrackingConfig(_Strict):
    """Experiment tracking with MLflow (`bigearth.training.tracking`): parameters, metrics per epoch and the
    artefacts, logged from rank 0. Without a URI a local folder storage gets its own store, `<storage>/mlflow.db`
    (SQLite, no server); object storage without one is not tracked (its run folder keeps metrics and curves)."""

    mlflow: bool = Field(True, description="log the run to MLflow")
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI (`http(s)://server`, `sqlite:///file.db`, ...); default "
        "`MLFLOW_TRACKING_URI`, else `sqlite:///<storage>/mlflow.db` for a local storage",
    )
    experiment: str = Field("bigearth", min_length=1, description="MLflow experiment the run is logged under")


class TrainConfig(_Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    scaling: ScalingConfig = ScalingConfig()
    run: RunConfig = RunConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainConfig:
        self.worker_batch_size()
        return self

    def worker_batch_size(self, workers: int | None = None) -> int:
        """Pairs per worker and step: `global_batch_size / workers` when set (it must divide), else `batch_size`."""
        workers = workers or self.scaling.num_workers
        if self.data.global_batch_size is None:
            return self.data.batch_size
        per, left = divmod(self.data.global_batch_size, workers)
        if left or per < 1:
            g = self.data.global_batch_size
            near = sorted({max(workers, g // workers * workers), -(-g // workers) * workers})
            raise ConfigError(
                f"data.global_batch_size {self.data.global_batch_size} does not divide among {workers} workers "
                f"(scaling.num_workers): every worker takes the same batch, so use a multiple of {workers} "
                f"(e.g. {' or '.join(str(n) for n in near)}) or another number of workers"
            )
        return per

    def model_kwargs(self) -> dict[str, Any]:
        """What the model builder gets (besides `num_classes`) and a checkpoint records: the `model` section and,
        as `retrieval`, the `retrieval` section (for builders that take it)."""
        from bigearth.models.registry import accepts, task_of

        kwargs = self.model.model_dump(exclude={"name"}, exclude_none=True)
        name = self.model.name
        for key in BUILDER_KEYS:  # keys only some builders take: refused by name, not by a TypeError deep in timm
            if key in kwargs and not accepts(name, key):
                raise ConfigError(
                    f"model.{key}: model {name!r} ({task_of(name)}) takes no {key}"
                    + (f" ({BUILDER_KEYS[key]})" if BUILDER_KEYS[key] else "")
                )
        if accepts(self.model.name, "retrieval"):
            kwargs["retrieval"] = self.retrieval.model_dump()
        return kwargs


#: model-section keys a builder must declare to take (else `model_kwargs` refuses them, naming the key and model)
BUILDER_KEYS = {
    "backbone": "tiny and seg-tiny have a fixed backbone, test_resnet",
    "fusion": "only tiny and seg-tiny take it; the other names are the fusions",
    "decoder_channels": "only the segmentation models (seg-*) have a decoder",
}


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k} is not a section")
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Parse a YAML config and apply `key.sub=value` overrides (values parsed as YAML: 1e-3, true, null...)."""
    tree: dict[str, Any] = {}
    if path:
        text = Path(path).read_text()
        tree = yaml.safe_load(text) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. optim.lr=3e-4")
        key, raw = item.split("=", 1)
        _set(tree, key.strip(), yaml.safe_load(raw))
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as e:
        lines = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{path or 'config'}: " + "; ".join(lines)) from None
