"""The service's HTTP surface as a plain FastAPI application over injected interfaces
(`bigearth.serving.interfaces`): every route (`bigearth.serving.routes`), the API key, body limits, errors as JSON
(`ErrorBody`), request counts for `/metrics`, the web page. No Ray: Serve wraps it (`bigearth.serving.ingress`),
and it runs in-process as it is (`create_app(...)` under any ASGI server or test client).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bigearth.api.schemas import ApiError
from bigearth.serving.args import AppArgs
from bigearth.serving.guard import OPEN_PATHS, content_length_error, internal_error
from bigearth.serving.interfaces import Classifier, Metrics, Retriever, Segmenter, Unavailable
from bigearth.serving.openapi import ServiceApi, new_api
from bigearth.serving.routes import ROUTERS
from bigearth.serving.service import Service

log = logging.getLogger("bigearth.serve")


def create_app(
    classifier: Classifier,
    retriever: Retriever,
    metrics: Metrics,
    args: AppArgs,
    segmenter: Segmenter | None = None,
) -> ServiceApi:
    """The application answering with `classifier`, `retriever`, `metrics` and `segmenter` (none: /v1/segment is a
    404 saying so) under `args` (API keys, body limit and timeout, default threshold); refuses to be made without
    keys when `args.require_auth` (NoApiKeysError)."""
    app = build_api()
    app.state.service = Service(classifier, retriever, metrics, args, segmenter)
    return app


def build_api() -> ServiceApi:
    """The routes, the guard and the error handlers, no service yet (every request a 503 `starting up` until one
    is attached): what the OpenAPI document is made from."""
    app = new_api()
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(Unavailable, _unavailable)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.middleware("http")(_guard)
    for router in ROUTERS:
        app.include_router(router)
    return app


def document() -> dict[str, Any]:
    """The OpenAPI document the service serves at /openapi.json."""
    doc: dict[str, Any] = build_api().openapi()
    return doc


# ------------------------------------------------------------------------------------------------ the guard
async def _guard(request: Request, call_next: Any) -> Response:
    """Every request: the key, the Content-Length limit, a 500 with an error id for anything unexpected; counted."""
    service: Service | None = getattr(request.app.state, "service", None)
    if service is None:
        return JSONResponse(ApiError(503, "starting up").body(), 503, headers={"Retry-After": "1"})
    t = time.perf_counter()
    response = await _guarded(service, request, call_next)
    route = getattr(request.scope.get("route"), "path", "unmatched")
    service.tally.pending.request(route, response.status_code, time.perf_counter() - t)
    service.tally.start()
    return response


async def _guarded(service: Service, request: Request, call_next: Any) -> Response:
    path = request.url.path
    open_path = path in OPEN_PATHS or path in service.page
    if service.keys and not open_path and not service.authenticated(request.headers):
        return JSONResponse(ApiError(401, "missing or wrong API key (header X-API-Key)", "X-API-Key").body(), 401)
    too_large = content_length_error(request.headers.get("content-length"), service.limit)
    if too_large is not None:
        return JSONResponse(too_large.body(), 413)
    try:
        response: Response = await call_next(request)
        return response
    except Exception as e:  # the service must keep answering; log and report
        err = _unwrap(e)
        if err is not None:
            return JSONResponse(err.body(), err.status)
        if isinstance(e, Unavailable):
            return _gone(path, e)
        return JSONResponse(internal_error(e, path)[0], 500)


# ------------------------------------------------------------------------------------------------ errors as JSON
def _unwrap(exc: BaseException) -> ApiError | None:
    """An ApiError, also when it comes wrapped by an executor (its `cause`); None for an ApiError-like exception
    that lost its status on the way."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, ApiError):
        return cause
    return exc if isinstance(exc, ApiError) and hasattr(exc, "status") else None


def _gone(path: str, exc: BaseException) -> JSONResponse:
    log.warning("%s: a replica was unavailable (%s: %s)", path, type(exc).__name__, str(exc)[:200])
    gone = ApiError(503, "a model or index replica is restarting; retry shortly", None)
    return JSONResponse(gone.body(), 503, headers={"Retry-After": "1"})


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    err = _unwrap(exc)
    if err is None:
        return JSONResponse(internal_error(exc, request.url.path)[0], status_code=500)
    return JSONResponse(err.body(), status_code=err.status)


async def _unavailable(request: Request, exc: Unavailable) -> JSONResponse:
    return _gone(request.url.path, exc)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own answers (no such path, a method a path does not take) in the error model too."""
    path, method = request.url.path, request.method
    message = {404: f"no route {path}", 405: f"{path} does not take {method}"}.get(exc.status_code, exc.detail)
    return JSONResponse(ApiError(exc.status_code, message).body(), exc.status_code, headers=exc.headers)


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    err = exc.errors()[0]
    field = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
    return JSONResponse(ApiError(422, f"{field or 'request'}: {err.get('msg')}", field or None).body(), 422)
