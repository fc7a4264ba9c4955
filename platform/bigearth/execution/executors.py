"""Executors: how a stage's units run. The unit of a stage is a plain function over plain inputs (ingest one shard,
predict one batch, embed one batch, sum one shard file); an executor runs many of them.

    ex = executor_for("local")                    # in this process, one after another, a tqdm bar; no Ray
    ex = executor_for("ray")                      # Ray Data tasks / actors on the running Ray (or RAY_ADDRESS)
    reports = list(ex.map(ingest_one, items, desc="ingest", resources=Resources(cpus=1)))
    for out in ex.map_batches(Predictor, files, read=read_file, unit_kwargs={...}, batch_size=128): ...

`map` gives the results in the order of the items. An exception a unit raises reaches the caller as itself (its
type, its message), whichever the executor: on Ray the task catches it and the driver raises it again, with the
remote traceback as a note, so callers catch store faults by type (`bigearth.core.storage.StorageError`), never
by reading traceback text. Nothing here imports Ray but `RayExecutor` when it runs.
"""

from __future__ import annotations

import pickle
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from bigearth.core.memory import HEAP_ENV, release_freed_memory

#: A batch: an Arrow table or a dict of numpy columns.
Batch = Any


@dataclass(frozen=True)
class Resources:
    """What one unit needs: CPUs and GPUs per task or worker; `concurrency`: at most this many at once (for
    `map_batches`: the number of workers, each holding its own instance of the unit)."""

    cpus: float | None = None
    gpus: float = 0
    concurrency: int | None = None


class Executor(ABC):
    """Runs the units of a stage."""

    name: str = ""

    @abstractmethod
    def map(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        desc: str = "",
        resources: Resources | None = None,
    ) -> Iterator[Any]:
        """`fn(item)` for every item, results in the order of `items`."""

    @abstractmethod
    def map_batches(
        self,
        unit: Callable[..., Any],
        sources: Sequence[Any],
        *,
        read: Callable[[Any], Iterable[Batch]],
        unit_kwargs: dict[str, Any] | None = None,
        batch_size: int | None = None,
        out_batch_size: int | None = None,
        desc: str = "",
        resources: Resources | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """The batches `read(source)` yields (every source, cut into batches of `batch_size` rows; None: as read),
        each through `unit`, out as dicts of numpy columns (of `out_batch_size` rows; None: as produced).
        `unit` is a function, or a class: then it is built once per worker with `unit_kwargs` (a model loaded
        once) and called on every batch."""


class LocalExecutor(Executor):
    """In this process, one unit after another, with a tqdm bar (`progress`). Imports no Ray."""

    name = "local"

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        desc: str = "",
        resources: Resources | None = None,
    ) -> Iterator[Any]:
        from tqdm import tqdm

        with tqdm(total=len(items), desc=desc or None, disable=not self.progress) as bar:
            for item in items:
                yield fn(item)
                bar.update(1)

    def map_batches(
        self,
        unit: Callable[..., Any],
        sources: Sequence[Any],
        *,
        read: Callable[[Any], Iterable[Batch]],
        unit_kwargs: dict[str, Any] | None = None,
        batch_size: int | None = None,
        out_batch_size: int | None = None,
        desc: str = "",
        resources: Resources | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        from tqdm import tqdm

        call = unit(**(unit_kwargs or {})) if isinstance(unit, type) else unit

        def batches() -> Iterator[Batch]:
            with tqdm(total=len(sources), desc=desc or None, unit="file", disable=not self.progress) as bar:
                for source in sources:
                    yield from read(source)
                    bar.update(1)

        results = (call(b) for b in rebatch(batches(), batch_size))
        yield from rebatch((as_numpy(r) for r in results), out_batch_size)


class RayExecutor(Executor):
    """Ray Data tasks (`map`) and actor pools (`map_batches`) on the Ray this process is attached to; if it is not
    attached yet, the first call attaches (`ensure_ray`: `address`, else RAY_ADDRESS or the last `ray start`, else
    a local Ray: what every stage did before it took an executor)."""

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        self.address = address

    def attach(self) -> None:
        import ray

        if not ray.is_initialized():
            from bigearth.execution.raycluster import ensure_ray

            ensure_ray(address=self.address)

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        desc: str = "",
        resources: Resources | None = None,
    ) -> Iterator[Any]:
        import ray

        self.attach()
        res = resources or Resources()
        # One item = one block = one task; each carries its own input, nothing large is shared or captured.
        ds: Any = ray.data.from_items(
            [{"item": pickle.dumps(x)} for x in items], override_num_blocks=max(1, len(items))
        )
        # Each task's output is a few bytes: Ray Data's per-operator resource reservation (sized for operators that
        # pass data on) held ingest to 1 task of 2 CPUs for much of a run (measured: 202 -> 396 pairs/s).
        ds.context.op_resource_reservation_enabled = False
        ds.context.execution_options.preserve_order = True
        ds = ds.map(
            _call_pickled,
            fn_kwargs={"fn": fn},
            concurrency=res.concurrency,
            num_cpus=res.cpus if res.cpus is not None else 1,
            num_gpus=res.gpus or None,
            # workers of their own whose heap gives back what each unit freed (bigearth.core.memory)
            runtime_env={"env_vars": HEAP_ENV},
        )
        try:
            for row in ds.iter_rows():
                if row["error"]:
                    raise pickle.loads(row["error"])
                yield pickle.loads(row["result"])
        except Exception as e:
            raise unwrap(e) from None

    def map_batches(
        self,
        unit: Callable[..., Any],
        sources: Sequence[Any],
        *,
        read: Callable[[Any], Iterable[Batch]],
        unit_kwargs: dict[str, Any] | None = None,
        batch_size: int | None = None,
        out_batch_size: int | None = None,
        desc: str = "",
        resources: Resources | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        import ray

        self.attach()
        res = resources or Resources()
        # One block per source (a shard file): each read task streams it batch by batch.
        ds: Any = ray.data.from_items(
            [{"source": pickle.dumps(s)} for s in sources], override_num_blocks=max(1, len(sources))
        )
        ds = ds.map_batches(_read_pickled, batch_size=1, batch_format="numpy", fn_kwargs={"read": read})
        kwargs: dict[str, Any] = {"fn_constructor_kwargs": unit_kwargs} if isinstance(unit, type) else {}
        if isinstance(unit, type) or res.concurrency is not None:
            kwargs["concurrency"] = res.concurrency or 1
        ds = ds.map_batches(
            unit,
            batch_size=batch_size,
            batch_format="pyarrow",
            num_gpus=res.gpus or None,
            **kwargs,
        )
        try:
            yield from ds.iter_batches(batch_format="numpy", batch_size=out_batch_size)
        except Exception as e:
            raise unwrap(e) from None


def executor_for(name: str, *, address: str | None = None, progress: bool = True) -> Executor:
    """The executor named `local` or `ray` (`address`: the Ray cluster to attach to, for `ray`)."""
    if name == "local":
        return LocalExecutor(progress=progress)
    if name == "ray":
        return RayExecutor(address)
    raise ValueError(f"unknown executor {name!r}; expected 'local' or 'ray'")


def default_executor(executor: Executor | None) -> Executor:
    """`executor`, or the Ray executor (every stage's default)."""
    return executor if executor is not None else RayExecutor()


def unwrap(e: BaseException) -> BaseException:
    """The exception a unit raised, out of Ray's wrappers (`RayTaskError.cause`, an explicit `raise ... from`), or
    `e` itself when they hold none of another kind (Ray Data's `UserCodeException` arrives without its cause:
    `RayExecutor.map` sends a unit's exception back itself for that reason). Exceptions met while handling another
    (`__context__`, e.g. the end of a stream) are not causes and are not followed."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if not type(x).__module__.startswith("ray."):
            return x
        todo += [getattr(x, "cause", None), x.__cause__]
    return e


def _call_pickled(row: dict[str, Any], fn: Callable[[Any], Any]) -> dict[str, Any]:
    """Ray Data row UDF: one pickled item in; its pickled result, or the exception it raised (pickled with the
    remote traceback as a note: Ray's own wrapping loses the exception's type on the way to the driver). The worker
    runs the next unit in the same process: what the unit freed goes back after it (bigearth.core.memory)."""
    try:
        return _call(row, fn)
    finally:
        release_freed_memory()


def _call(row: dict[str, Any], fn: Callable[[Any], Any]) -> dict[str, Any]:
    try:
        return {"result": pickle.dumps(fn(pickle.loads(row["item"]))), "error": b""}
    except Exception as e:
        e.add_note("".join(traceback.format_exception(e)).rstrip())
        try:
            blob = pickle.dumps(e)
            pickle.loads(blob)
        except Exception:
            raise e from None  # not picklable: Ray's wrapping is the best there is
        return {"result": b"", "error": blob}


def _read_pickled(batch: dict[str, np.ndarray], read: Callable[[Any], Iterable[Batch]]) -> Iterator[Batch]:
    """Ray Data UDF: pickled sources in, what `read` yields for each out."""
    for blob in batch["source"]:
        yield from read(pickle.loads(blob))


def as_numpy(batch: Batch) -> dict[str, np.ndarray]:
    """A batch as a dict of numpy columns."""
    if isinstance(batch, pa.Table):
        return {name: batch.column(name).to_numpy(zero_copy_only=False) for name in batch.column_names}
    return {k: np.asarray(v) for k, v in batch.items()}


def rebatch(batches: Iterable[Batch], size: int | None) -> Iterator[Batch]:
    """Batches (Arrow tables or dicts of numpy columns) cut and joined into batches of `size` rows (the last one
    shorter); None: as they come."""
    if size is None:
        yield from batches
        return
    pending: list[Batch] = []
    rows = 0
    for b in batches:
        pending.append(b)
        rows += _rows(b)
        while rows >= size:
            whole = _concat(pending)
            yield _slice(whole, 0, size)
            rest = _slice(whole, size, rows)
            rows -= size
            pending = [rest] if rows else []
    if rows:
        yield _concat(pending)


def _rows(b: Batch) -> int:
    return int(b.num_rows) if isinstance(b, pa.Table) else len(next(iter(b.values())))


def _concat(bs: list[Batch]) -> Batch:
    if len(bs) == 1:
        return bs[0]
    if isinstance(bs[0], pa.Table):
        return pa.concat_tables(bs)
    return {k: np.concatenate([b[k] for b in bs]) for k in bs[0]}


def _slice(b: Batch, start: int, stop: int) -> Batch:
    if isinstance(b, pa.Table):
        return b.slice(start, stop - start)
    return {k: v[start:stop] for k, v in b.items()}
