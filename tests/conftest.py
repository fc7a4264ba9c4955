"""Shared fixtures: the real BigEarthNet files in ../shared, a local Ray, synthetic archives, a real S3 server."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import BEN

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # extra `ray start --address` nodes need it on this Ray
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Ray Train's controller polls its workers every 2 s by default; each of the suite's ~12 training runs waits on a
# few polls to start and end (measured: 19.1 -> 15.7 s for a one-report run at 0.2 s)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


TESTS = Path(__file__).resolve().parent
#: The tiers, one folder each; a test's tier is its folder (marker `unit`, `integration` or `e2e`).
TIERS = ("unit", "integration", "e2e")
#: Fixtures that start Ray or a server: a unit test may not use them, not even through another fixture.
NOT_IN_UNIT = {"ray_local", "s3"}
#: Session fixtures that train or index (tens of seconds each): under `--dist loadgroup` the modules that name one
#: run on one xdist worker, which builds them once (`pytest_xdist_make_scheduler`).
ONE_WORKER = re.compile(r"\b(tiny_run|index_v2)\b")


def xdist_worker() -> int | None:
    """This process's pytest-xdist worker number (`gw3` -> 3), None outside xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER")
    return int(name.removeprefix("gw")) if name else None


def ray_temp_root() -> str | None:
    """Under xdist, every Ray this worker starts (its session Ray, one a library starts, a CLI subprocess's) keeps its
    sockets, logs and `ray_current_cluster` under /tmp/rw<n> (short: Ray's socket paths have a length limit)."""
    n = xdist_worker()
    return None if n is None else f"/tmp/rw{n}"


def pytest_configure(config: pytest.Config) -> None:
    root = ray_temp_root()
    if root:
        os.makedirs(root, exist_ok=True)
        os.environ["RAY_TMPDIR"] = root


def tier_of(item: pytest.Item) -> str | None:
    parts = Path(str(item.path)).resolve().relative_to(TESTS).parts
    return parts[0] if len(parts) > 1 and parts[0] in TIERS else None


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: none without it
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup` as this suite needs it: a module is one unit of work (its module fixtures, such as a Serve
    deployment, are built once), and the modules naming `tiny_run` or `index_v2` are one unit together. (xdist's own
    loadgroup reads `xdist_group` marks through `item._nodeid`, which pytest 9.2's nodes no longer have.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    heavy = {
        p.relative_to(config.rootpath).as_posix() for p in TESTS.glob("*/test_*.py") if ONE_WORKER.search(p.read_text())
    }

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "session-run" if module in heavy else module

    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misplaced = []
    for item in items:
        tier = tier_of(item)
        if tier is None:
            misplaced.append(f"{item.nodeid}: every test lives in tests/unit, tests/integration or tests/e2e")
            continue
        item.add_marker(getattr(pytest.mark, tier))
        used = NOT_IN_UNIT.intersection(getattr(item, "fixturenames", ()))
        if tier == "unit" and used:
            misplaced.append(f"{item.nodeid}: a unit test uses {sorted(used)} (Ray or a server): integration tier")
    if misplaced:
        raise pytest.UsageError("tests in the wrong tier:\n  " + "\n  ".join(misplaced))
    if not BEN.exists():
        skip = pytest.mark.skip(reason=f"{BEN} not found: the real BigEarthNet files live in ../shared")
        for item in items:
            if "real" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Every training run of the session is tracked in one MLflow store in a temporary folder (`MLFLOW_TRACKING_URI`,
    never a developer's own server): a new SQLite store costs ~7 s of schema migrations. `tiny_run` uses the default
    store instead (`<storage>/mlflow.db`)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # no usage reports from the tests' runs
        yield uri


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One local Ray for the whole session (2 CPUs, no dashboard), always a new one (`address="local"`: never a
    cluster found through RAY_ADDRESS or `ray_current_cluster`, such as another xdist worker's); under xdist in the
    worker's own temp dir."""
    import ray

    if not ray.is_initialized():
        root = ray_temp_root()
        temp = {"_temp_dir": f"{root}/ray"} if root else {}
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, **temp)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def synth_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic v2 archive (120 pairs, seed 7); treat as read-only."""
    from bigearth.synth.archive import synthesize

    out = tmp_path_factory.mktemp("synth") / "v2"
    synthesize(str(out), layout="v2", pairs=120, seed=7, progress=False)
    return out


@pytest.fixture(scope="session")
def synth_v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic v1 archive (120 pairs, seed 3) with its official-format lists in `lists/`."""
    from bigearth.synth.archive import synthesize

    out = tmp_path_factory.mktemp("synth") / "v1"
    synthesize(str(out), layout="v1", pairs=120, seed=3, progress=False)
    return out


@pytest.fixture(scope="session")
def synth_v2_maps(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two synthetic v2 pairs (seed 5) with their reference maps (tests/*/test_geotiff.py); treat as read-only."""
    from bigearth.synth.archive import synthesize

    root = tmp_path_factory.mktemp("v2maps") / "v2"
    synthesize(str(root), layout="v2", pairs=2, seed=5, progress=False, workers=1, reference_maps=True)
    return str(root)


@pytest.fixture(scope="session")
def shards_v2(synth_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic v2 archive ingested with the default policy (shards of 30 pairs), in this process (the local
    executor: no Ray; tests/integration/test_ingest.py checks that the Ray executor writes the same bytes)."""
    from bigearth.execution.executors import LocalExecutor
    from bigearth.ingest.job import ingest

    out = tmp_path_factory.mktemp("shards") / "v2"
    ingest(str(synth_v2), str(out), shard_size=30, executor=LocalExecutor(progress=False))
    return out


@pytest.fixture(scope="session")
def packed_v2(synth_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`synth_v2` packed as the published downloads (`*.tar.zst` and their MD5SUMS); treat as read-only."""
    from bigearth.synth.packed import pack_archive

    out = tmp_path_factory.mktemp("packed-v2")
    pack_archive(str(synth_v2), str(out), "v2")
    return out


@pytest.fixture(scope="session")
def tiny_run(shards_v2: Path, tmp_path_factory: pytest.TempPathFactory, mlflow_store: str) -> Path:
    """`tiny-cpu` trained for 2 epochs on `shards_v2` (a run folder; treat as read-only), tracked in MLflow's default
    store of its storage folder (`tiny_run.parent / "mlflow.db"`, tests/integration/test_tracking.py)."""
    from bigearth.training.config import load_config
    from bigearth.training.trainer import train
    from helpers import REPO

    storage = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI")  # the default store, not the session's
        train(
            load_config(REPO / "configs" / "tiny-cpu.yaml", ["optim.epochs=2", "data.batch_size=16"]),
            str(shards_v2),
            str(storage),
            "tiny",
        )
    return storage / "tiny"


@pytest.fixture(scope="session")
def index_v2(tiny_run: Path, shards_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every pair of `shards_v2` embedded by `tiny_run` in the embedded engine (collection `bigearthnet`)."""
    from bigearth.retrieval.indexer import build_index

    target = tmp_path_factory.mktemp("index") / "edge"
    build_index(str(tiny_run), str(shards_v2), str(target), progress=False)
    return target


@pytest.fixture
def archive_copy(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Copy a read-only archive fixture to a writable folder (for planting faults)."""

    def copy(src: Path) -> Path:
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        return dst

    return copy


@pytest.fixture(scope="session")
def s3() -> Iterator[object]:
    """A real S3 server (SeaweedFS on 127.0.0.1, free ports, temporary data), stopped after the session."""
    from seaweed import SeaweedS3

    with SeaweedS3() as server:
        yield server
