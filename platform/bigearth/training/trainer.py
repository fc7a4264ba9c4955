"""Train a config on a shard set: checked once on the driver, tracked in MLflow, then run by an executor: Ray
Train's `TorchTrainer` (Train V2 API; on a laptop's local Ray or a cluster, `ray job submit`) or this process
alone (`executor="local"`, no Ray); checkpoints on a local folder or `s3://`."""

from __future__ import annotations

import functools
import os
import time
from typing import Any

from bigearth.core.secrets import redact
from bigearth.core.storage import StorageOptions, join, portable_arrow_filesystem
from bigearth.input.loader import RowGroup, subset_plans
from bigearth.models.registry import create_model, task_of
from bigearth.shards.shardset import ShardSet
from bigearth.training import tracking
from bigearth.training.config import TrainConfig


def model_bands(cfg: TrainConfig) -> tuple[str, ...]:
    """The bands the configured model reads (decides which shard columns are streamed)."""
    kwargs = {k: v for k, v in cfg.model_kwargs().items() if k != "pretrained"}
    model = create_model(cfg.model.name, num_classes=cfg.data.nomenclature, **kwargs)  # fails here, not in workers
    return tuple(model.bands)  # type: ignore[arg-type]


def run_folder(storage: str, name: str) -> str:
    return join(storage.rstrip("/"), name) if "://" in storage else os.path.join(os.path.abspath(storage), name)


#: How a run is executed: Ray Train (the default: workers on a cluster, or on a local Ray the caller attached to)
#: or this process alone (`bigearth.training.local`, no Ray).
EXECUTORS = ("ray", "local")


def train(
    cfg: TrainConfig,
    data: str,
    storage: str,
    name: str | None = None,
    storage_options: StorageOptions | None = None,
    executor: str = "ray",
) -> Any:
    """Train on the shard set `data`; checkpoints and metrics go to `storage/name` (re-run to resume), and to MLflow
    (`cfg.tracking`, `bigearth.training.tracking`). `executor="ray"` runs Ray Train on the Ray this process is
    attached to (the CLI and the jobs attach, `bigearth.execution.raycluster.ensure_ray`); `"local"` trains in
    this process with no Ray. Returns Ray Train's `Result`, or a `TrainResult` (both have `path` and `metrics`)."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; expected one of {list(EXECUTORS)}")
    so = storage_options or StorageOptions.from_env()
    shard_set = ShardSet.open(data, so)
    shard_set.files([cfg.data.train_split, cfg.data.val_split])  # an unknown split names the ones there are
    model_bands(cfg)  # a bad model config fails here, before any worker starts (workers read these bands)
    shard_set.label_column(cfg.data.nomenclature)  # 43 classes of a v2 shard set: the shard set's error
    check_segmentation(cfg, shard_set, executor)
    name = name or f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "://" not in storage:
        os.makedirs(storage, exist_ok=True)
    run_dir = run_folder(storage, name)
    world = cfg.scaling.num_workers if executor == "ray" else 1
    plans = training_plans(cfg, data, so)  # data.countries / data.seasons: the selected rows (else the manifest's)
    train_pairs, val_pairs = (sum(g.rows for g in p) for p in plans)
    from bigearth.training.loop import check_validation_rows

    check_validation_rows(cfg.data.val_split, val_pairs, world)  # here, before any worker starts
    target = tracking.start_run(
        cfg,
        storage,
        run_dir,
        name,
        {
            "shards": data,
            "storage": storage,
            "world_size": world,
            "train_pairs": train_pairs,
            "val_pairs": val_pairs,
        },
    )
    config = {
        "cfg": redact(cfg.model_dump()),  # the workers' config: no credentials (the tracking URI is `tracking`)
        "train_pairs": train_pairs,
        "run_dir": run_dir,
        "storage": so,
        "tracking": target,
        "run": {"name": name, "run_dir": redact(run_dir), "executor": executor, "world_size": world},
    }
    try:
        if executor == "local":
            from bigearth.training.local import fit_local

            result = fit_local(cfg, data, run_dir, config, plans)
        else:
            result = _fit_ray(cfg, data, storage, name, so, config, plans)
    except BaseException as e:
        tracking.end_run(target, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    tracking.end_run(target, "FINISHED")
    return result


def training_plans(cfg: TrainConfig, data: str, so: StorageOptions | None) -> tuple[list[RowGroup], list[RowGroup]]:
    """The training and validation plans (`bigearth.input.loader.row_groups`) of the config's splits, of the rows
    `data.countries` / `data.seasons` select (an `EmptySubsetError` naming the filter and split when none; an
    `UnknownSubsetValueError` for a country neither split has: `subset_plans`)."""
    train_plan, val_plan = subset_plans(data, [cfg.data.train_split, cfg.data.val_split], so, cfg.data.subset())
    return train_plan, val_plan


def check_segmentation(cfg: TrainConfig, shard_set: ShardSet, executor: str = "ray") -> None:
    """A segmentation model needs the shards' reference maps, the 19 classes and, under Ray, the worker pipeline
    (the local executor reads with it whatever `data.pipeline` says): refused here, before any worker starts, naming
    the shard set and what to do."""
    if task_of(cfg.model.name) != "segmentation":
        return
    from bigearth.shards.decode import require_maps
    from bigearth.training.loop import RAY_DATA_NO_MAPS

    if cfg.data.pipeline == "ray_data" and executor == "ray":
        raise ValueError(RAY_DATA_NO_MAPS)
    if cfg.data.nomenclature != 19:
        raise ValueError(f"segmentation maps have the 19 classes; data.nomenclature is {cfg.data.nomenclature}")
    maps = shard_set.manifest.source.get("reference_maps")
    require_maps(["reference_map"] if maps else [], f"shard set {shard_set.url}")


#: What Ray Train keeps in a run folder it resumes (Train V2).
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def refuse_foreign_run(run_dir: str, so: StorageOptions | None = None) -> None:
    """Ray Train resumes a run folder only from its own snapshot: a folder whose latest checkpoint a local run wrote
    (`--executor local`, no snapshot) would be started over and its history overwritten, so it is refused, naming
    the folder."""
    from bigearth.core.storage import open_fs
    from bigearth.models import checkpoints

    fs, root = open_fs(run_dir, so)
    if not fs.exists(root) or fs.exists(join(root, RAY_SNAPSHOT)):
        return
    last = checkpoints.latest(run_dir, so)
    if last is not None and last.record.run is not None and last.record.run.executor == "local":
        raise ValueError(
            f"{run_dir}: a run written by --executor local (its checkpoints, no Ray Train snapshot); Ray Train would "
            "start it over: re-run it with --executor local, or give another --name"
        )


def ray_data_batches(
    cfg: TrainConfig,
    data: str,
    so: StorageOptions | None,
    run_dir: str,
    bands: tuple[str, ...] | None = None,
    plan: list[RowGroup] | None = None,
) -> Any:
    """The `data.pipeline: ray_data` Dataset of a run (`bigearth.input.raybatches.open_batches`): the workers'
    batch size and bands; its shuffle seeded by `run.seed` and the epoch the run resumes at, read from the run's
    latest checkpoint when called (Ray Data reseeds by its execution index, which starts at 0 whenever the Dataset
    is split anew: Ray Train calls this at every worker group's start, a restart after a failure included).
    `plan`: the training plan (else the split's, of `data.countries` / `data.seasons`)."""
    from bigearth.input.raybatches import open_batches, resume_seed
    from bigearth.models import checkpoints

    last = checkpoints.latest(run_dir, so)
    return open_batches(
        data,
        cfg.data.train_split,
        batch_size=cfg.worker_batch_size(),
        shuffle_buffer=cfg.data.local_shuffle_buffer,
        bands=bands or model_bands(cfg),
        nomenclature=cfg.data.nomenclature,
        storage=so,
        seed=resume_seed(cfg.run.seed, (last.record.epoch or 0) if last is not None else 0),
        plan=plan,
        subset=cfg.data.subset(),
    )


def check_ray_data(cfg: TrainConfig, train_pairs: int, cpus: float) -> None:
    """`data.pipeline: ray_data` on this cluster: an epoch must give every worker a batch (whole batches only,
    split equally), and the collating tasks need a CPU the Train workers leave free (else they wait for one)."""
    batch, world = cfg.worker_batch_size(), cfg.scaling.num_workers
    if train_pairs // batch < world:
        raise ValueError(
            f"data.pipeline ray_data: {train_pairs} train pairs make {train_pairs // batch} whole batches of "
            f"{batch}, fewer than scaling.num_workers {world}: lower data.batch_size (or global_batch_size) or the "
            "workers, or use data.pipeline worker"
        )
    free = cpus - world * cfg.scaling.cpus_per_worker
    if free < 1:
        print(
            f"data.pipeline ray_data: the Train workers reserve {world} x scaling.cpus_per_worker "
            f"{cfg.scaling.cpus_per_worker:g} of the cluster's {cpus:g} CPUs, leaving {max(free, 0):g}: the collating "
            "tasks need one each and wait until a node with a free CPU joins (lower scaling.cpus_per_worker)"
        )


def _fit_ray(
    cfg: TrainConfig,
    data: str,
    storage: str,
    name: str,
    so: StorageOptions,
    config: dict[str, Any],
    plans: tuple[list[RowGroup], list[RowGroup]],
) -> Any:
    """Ray Train's `TorchTrainer` over `bigearth.training.raytrain.train_loop_per_worker`."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from bigearth.input.loader import plan_dataset
    from bigearth.training.collectives import CollectiveConfig
    from bigearth.training.raytrain import BATCHES, train_loop_per_worker

    # The plan (one row per Parquet row group) goes to every worker whole: each takes its share per epoch
    # (bigearth.input.loader.epoch_share), so all run the same number of steps and the split drops nothing.
    datasets: dict[str, Any] = {
        "train": plan_dataset(plans[0]),
        "validation": plan_dataset(plans[1]),
    }
    refuse_foreign_run(config["run_dir"], so)
    split: list[str] = []
    if cfg.data.pipeline == "ray_data":
        # batches collated by Ray Data tasks on any node; DataConfig splits them with streaming_split(equal=True)
        check_ray_data(cfg, int(config["train_pairs"]), float(ray.cluster_resources().get("CPU", 0)))
        # a function: Ray Train makes the Dataset at every worker group's start (seeded by the epoch resumed at)
        batches = functools.partial(ray_data_batches, cfg, data, so, config["run_dir"], model_bands(cfg), plans[0])
        datasets[BATCHES] = batches
        split = [BATCHES]
    if "://" in storage:
        fs, path = portable_arrow_filesystem(storage, so)  # pickled into Ray Train's actors: secrets sealed
        storage_kw: dict[str, Any] = {"storage_path": path, "storage_filesystem": fs}
    else:
        storage_kw = {"storage_path": os.path.abspath(storage)}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        torch_config=CollectiveConfig(),  # Gloo/NCCL on the interface of each node's Ray address
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            placement_strategy=cfg.scaling.placement_strategy,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if cfg.scaling.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.run.keep_checkpoints,
                checkpoint_score_attribute="val_score",  # val_macro_ap, or val_miou (bigearth.training.objectives)
                checkpoint_score_order="max",
            ),
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            **storage_kw,
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=split),
    )
    return trainer.fit()
