"""The ingress deployment: Serve's deployment handles adapted to the interfaces of `bigearth.serving.interfaces`,
and the plain FastAPI application of `bigearth.serving.http` over them, wrapped by `serve.ingress` (built in each
replica, after its handles arrive). What a handle raises is translated here: another deployment's `ApiError` comes
back as itself, a dead, restarting or overloaded replica as `Unavailable`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

import numpy as np

from bigearth.api.schemas import ApiError
from bigearth.serving.interfaces import Unavailable

log = logging.getLogger("bigearth.serve")


def _replica_gone() -> tuple[type[BaseException], ...]:
    """What a call to another deployment raises while its replica is dead, restarting or overloaded."""
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

    return (
        RayActorError,
        ActorUnavailableError,
        BackPressureError,
        DeploymentUnavailableError,
        ReplicaUnavailableError,
    )


async def _call(response: Awaitable[Any]) -> Any:
    """The result of a handle call; an `ApiError` raised in the other deployment as itself (Ray wraps it), a gone
    replica as `Unavailable`."""
    try:
        return await response
    except Exception as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, ApiError):
            raise cause from None
        if isinstance(e, _replica_gone()):
            raise Unavailable(f"{type(e).__name__}: {e}") from e
        raise


class HandleClassifier:
    """`Classifier` over the Classifier deployment's handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = await _call(self.handle.describe.remote())
        return described

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        result: dict[str, Any] = await _call(self.handle.infer.remote(inputs))
        return result


class HandleSegmenter:
    """`Segmenter` over the Segmenter deployment's handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def describe(self) -> dict[str, Any]:
        return await _call(self.handle.describe.remote())  # type: ignore[no-any-return]

    async def segment(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        return await _call(self.handle.segment.remote(inputs))  # type: ignore[no-any-return]


class HandleRetriever:
    """`Retriever` over the Retriever deployment's handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def ready(self) -> dict[str, Any]:
        return await _call(self.handle.ready.remote())  # type: ignore[no-any-return]

    async def patch_arrays(self, patch_id: str, groups: dict[str, list[str]]) -> dict[str, np.ndarray]:
        return await _call(self.handle.patch_arrays.remote(patch_id, groups))  # type: ignore[no-any-return]

    async def search(self, req: dict[str, Any], query_vectors: dict[str, list[float]] | None) -> dict[str, Any]:
        return await _call(self.handle.search.remote(req, query_vectors))  # type: ignore[no-any-return]

    async def patch_ids(self, split: str | None, offset: int, limit: int) -> dict[str, Any]:
        return await _call(self.handle.patch_ids.remote(split, offset, limit))  # type: ignore[no-any-return]

    async def browse(self, req: dict[str, Any]) -> dict[str, Any]:
        return await _call(self.handle.browse.remote(req))  # type: ignore[no-any-return]

    async def facets(self, classes: list[str]) -> dict[str, Any]:
        return await _call(self.handle.facets.remote(classes))  # type: ignore[no-any-return]

    async def patch_info(self, patch_id: str) -> dict[str, Any]:
        return await _call(self.handle.patch_info.remote(patch_id))  # type: ignore[no-any-return]

    async def rgb(self, patch_id: str, scale: int) -> bytes:
        return await _call(self.handle.rgb.remote(patch_id, scale))  # type: ignore[no-any-return]

    async def reference_png(self, patch_id: str) -> bytes:
        return await _call(self.handle.reference_png.remote(patch_id))  # type: ignore[no-any-return]


class HandleMetrics:
    """`Metrics` over the MetricsHub deployment's handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def merge(self, replica: str, pending: dict[str, Any]) -> None:
        await _call(self.handle.merge.remote(replica, pending))

    async def render(self) -> bytes:
        return await _call(self.handle.render.remote())  # type: ignore[no-any-return]


def make_ingress(serve: Any) -> Any:
    """The ingress deployment class (declared in a function: no Ray import at module load). Each replica builds
    the app over its handles (`__serve_build_asgi_app__`, called by Serve after `__init__`)."""
    from bigearth.serving.args import AppArgs
    from bigearth.serving.http import create_app

    @serve.ingress()
    class Ingress:
        def __init__(
            self, classifier: Any, retriever: Any, metrics: Any, args: dict[str, Any], segmenter: Any = None
        ) -> None:
            # NoApiKeysError here (the replica does not start) when require_auth finds no key; not `self.app`:
            # Serve's wrapper has a read-only property of that name
            self.http_app = create_app(
                HandleClassifier(classifier),
                HandleRetriever(retriever),
                HandleMetrics(metrics),
                AppArgs.model_validate(args),
                None if segmenter is None else HandleSegmenter(segmenter),
            )

        def __serve_build_asgi_app__(self) -> Any:
            return self.http_app

    return Ingress
