"""The ingress deployment: FastAPI routes, auth, body limits, errors as JSON, Prometheus metrics.

No `from __future__ import annotations` here: FastAPI reads the route annotations (`Request`, ...) as objects.
"""

import hashlib
import hmac
import logging
import time
import uuid
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Query, Request, Response
from pydantic import BaseModel, ValidationError

from bigearth.api.schemas import (
    ERROR_STATUSES,
    MAX_OFFSET,
    MAX_PAGE,
    MAX_SCALE,
    ApiError,
    BrowseRequest,
    BrowseResponse,
    ClassifyByIdRequest,
    ClassifyResponse,
    ErrorBody,
    Facets,
    PatchId,
    PatchInfo,
    PatchList,
    Ready,
    SearchRequest,
    SearchResponse,
)
from bigearth.api.uploads import read_body, read_upload
from bigearth.retrieval.schema import Split
from bigearth.serving import web
from bigearth.serving.args import AppArgs
from bigearth.serving.metrics import Tally

log = logging.getLogger("bigearth.serve")

#: Paths answered without an API key: exactly these (a prefix match would also open `/metricsX`, `/docs-private`).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})


def internal_error(exc: BaseException, where: str) -> tuple[dict[str, Any], str]:
    """The body of a 500 and its error id: the exception (type, message, traceback) goes to the service log under
    that id, never into the answer, which may reach anyone."""

    error_id = uuid.uuid4().hex[:12]
    log.error("unhandled error %s on %s", error_id, where, exc_info=(type(exc), exc, exc.__traceback__))
    body = {"error": "internal", "message": f"internal error {error_id}: reported in the service log", "field": None}
    return body, error_id


def auth_status(keys: set[str]) -> str:
    """The line each ingress replica logs once at start: whether the API asks for a key."""
    if keys:
        return f"auth on: {len(keys)} API key(s) accepted (header X-API-Key); open paths: {sorted(OPEN_PATHS)}"
    return (
        "auth OFF: no API keys ($BIGEARTH_API_KEYS, api_keys_file), the API is open to anyone who can reach it; "
        "set require_auth=true to refuse to start without keys"
    )


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


#: The JSON request bodies the routes read by hand (a route that also takes multipart cannot declare a FastAPI body
#: parameter): their schemas join the document's components, where the operations refer to them.
BODY_MODELS: tuple[type[BaseModel], ...] = (ClassifyByIdRequest, SearchRequest, BrowseRequest)
SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "Bearer": {"type": "http", "scheme": "bearer", "description": "the same key as `Authorization: Bearer KEY`"},
}


class ServiceApi(FastAPI):
    """The service's FastAPI app; its OpenAPI document is the contract (docs/api.md): every answer of every
    operation, the request bodies' schemas as components, the API key."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            complete_document(super().openapi())
        return self.openapi_schema  # type: ignore[return-value]


def complete_document(doc: dict[str, Any]) -> dict[str, Any]:
    """Add what FastAPI cannot see to its document: the schemas of the bodies read by hand (refs to
    `#/components/schemas/...`, never a model's own `#/$defs/...`) and the API key on every non-open path."""
    from pydantic.json_schema import models_json_schema

    _, defs = models_json_schema([(m, "validation") for m in BODY_MODELS], ref_template="#/components/schemas/{model}")
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in defs.get("$defs", {}).items():
        if schemas.setdefault(name, schema) != schema:
            raise RuntimeError(f"OpenAPI component {name!r}: two different schemas under one name")
    doc["components"]["securitySchemes"] = SECURITY_SCHEMES
    for path, operations in doc["paths"].items():
        if path not in OPEN_PATHS:
            for operation in operations.values():
                operation["security"] = [{"ApiKey": []}, {"Bearer": []}]
    return doc


def make_fastapi_app() -> Any:
    return ServiceApi(
        title="BigEarthNet-MM classification and retrieval",
        version="1",
        description="Multi-label land-cover classification and content-based retrieval of Sentinel-1/Sentinel-2 "
        "patch pairs. Every error is `{error, message, field}` JSON (`ErrorBody`); each operation lists the statuses "
        "it answers. With API keys configured, every path but the probes, /metrics, the docs and the web page needs "
        "one (`X-API-Key` or `Authorization: Bearer`).",
    )


#: the `request` field of an uploaded search (a SearchRequest without patch id or vector: far shorter)
MAX_UPLOAD_REQUEST_CHARS = 65536


def key_digests(keys: set[str]) -> list[bytes]:
    """The SHA-256 of each API key, computed once at start: requests are compared digest to digest, so neither the
    time a comparison takes nor which comparison ends it depends on a key's length or on which key matched."""
    return [hashlib.sha256(k.encode()).digest() for k in sorted(keys)]


def authenticated(headers: Any, digests: list[bytes]) -> bool:
    """`headers` (a case-insensitive mapping) carry one of the keys: `X-API-Key: KEY` or `Authorization: Bearer KEY`
    (an Authorization header without the Bearer scheme is no key). False while auth is off (no digests)."""
    given = headers.get("x-api-key") or None
    if given is None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" and token.strip() else None
    if given is None:
        return False
    digest = hashlib.sha256(given.encode()).digest()
    matches = [hmac.compare_digest(digest, d) for d in digests]  # every key compared, whichever matches
    return any(matches)


def content_length_error(length: str | None, limit: int) -> ApiError | None:
    """The 413 for a Content-Length header that is not a number or is over `limit` bytes (never echoing the
    header), or None."""
    if length is None:
        return None
    if not (length.isascii() and length.isdigit()):
        return ApiError(413, f"invalid Content-Length (the limit is {limit} bytes)", "body")
    if len(length) > 18:  # not parsed: over any limit
        return ApiError(413, f"request body is over the limit of {limit} bytes", "body")
    if int(length) > limit:
        return ApiError(413, f"request body of {int(length)} bytes is over the limit of {limit} bytes", "body")
    return None


def _errors(*statuses: int, auth: bool = True) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for the error statuses a route answers besides those every route can (405: another
    method on its path; 413: the Content-Length header is checked on every path; 408 and 503 also come from Serve's
    HTTP proxy, in plain text; 500), and 401 unless the path is open: the error model and what the status means; a
    503's Retry-After."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, *((401,) if auth else ()), 405, 408, 413, 500, 503}):
        entry: dict[str, Any] = {"model": ErrorBody, "description": ERROR_STATUSES[status]}
        if status in (408, 503):
            entry["content"] = {"text/plain": {"schema": {"type": "string"}}}
        if status == 503:
            entry["headers"] = {
                "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
            }
        out[status] = entry
    return out


#: the statuses of a route that reads a body: a client that disconnects or a malformed multipart body (400), a
#: stalled body (408), one over the limit (413), another content type (415), invalid content (422)
_BODY_ERRORS = (400, 408, 413, 415, 422)
_PNG = {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}, "description": "a PNG"}
_PATCH_FILES = {
    "schema": {
        "type": "object",
        "description": "one GeoTIFF per band, the form field or file name naming the band "
        "(B01..B12, B8A, VV, VH), or one .npz file of arrays named by band or group; at most 32 files",
        "additionalProperties": {"type": "string", "format": "binary"},
        "maxProperties": 32,
    }
}
_CLASSIFY_BODY = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ClassifyByIdRequest"}},
            "multipart/form-data": _PATCH_FILES,
        },
        "required": True,
    }
}
_UPLOAD_BODY = {
    "requestBody": {
        "content": {"multipart/form-data": _PATCH_FILES},
        "required": True,
    }
}
_SEARCH_BODY = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SearchRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "description": "an uploaded query patch (band GeoTIFFs or one .npz, as for /v1/classify) plus "
                    "a `request` field holding the SearchRequest JSON without patch_id/vector; at most 32 files",
                    "properties": {
                        "request": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "maxLength": MAX_UPLOAD_REQUEST_CHARS,
                        }
                    },
                    "additionalProperties": {"type": "string", "format": "binary"},
                    "maxProperties": 33,
                }
            },
        },
        "required": True,
    }
}
_BROWSE_BODY = {
    "requestBody": {
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BrowseRequest"}}},
        "required": True,
    }
}


def make_ingress(serve: Any, fastapi_app: Any) -> Any:
    """The ingress deployment class bound to a FastAPI app (built in a function: no Ray import at module load)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from prometheus_client import CONTENT_TYPE_LATEST
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = fastapi_app

    replica: dict[str, Any] = {}  # this replica's Ingress instance, for the middleware

    def _unwrap(exc: BaseException) -> ApiError | None:
        """An ApiError, also when it comes back from another deployment wrapped by Ray."""
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ApiError):
            return cause
        return exc if isinstance(exc, ApiError) and hasattr(exc, "status") else None

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        err = _unwrap(exc)
        if err is None:
            return JSONResponse(internal_error(exc, request.url.path)[0], status_code=500)
        return JSONResponse(err.body(), status_code=err.status)

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Response:
        ingress = replica.get("ingress")
        if ingress is None:
            return JSONResponse(ApiError(503, "starting up").body(), 503, headers={"Retry-After": "1"})
        t = time.perf_counter()
        response: Response = await ingress._guarded(request, call_next, _unwrap)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        ingress.tally.pending.request(route, response.status_code, time.perf_counter() - t)
        ingress.tally.start()
        return response

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own answers (no such path, a method a path does not take) in the error model too."""
        path, method = request.url.path, request.method
        message = {404: f"no route {path}", 405: f"{path} does not take {method}"}.get(exc.status_code, exc.detail)
        return JSONResponse(ApiError(exc.status_code, message).body(), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        return JSONResponse(ApiError(422, f"{field or 'request'}: {err.get('msg')}", field or None).body(), 422)

    @serve.ingress(app)
    class Ingress:
        def __init__(self, classifier: Any, retriever: Any, metrics: Any, args: dict[str, Any]) -> None:
            self.classifier, self.retriever, self.hub = classifier, retriever, metrics
            self.args = AppArgs.model_validate(args)
            self.keys = self.args.keys()  # NoApiKeysError (the replica does not start) when require_auth finds none
            self.key_digests = key_digests(self.keys)
            log.warning(auth_status(self.keys))  # warning level: reaches the replica log whatever its setup
            self.limit = int(self.args.max_body_mb * 1024 * 1024)
            self._model: dict[str, Any] | None = None
            self.tally = Tally(metrics)  # sent to the MetricsHub every second and before /metrics answers
            self.page = web.paths()
            replica["ingress"] = self

        async def _guarded(self, request: Request, call_next: Any, unwrap: Any) -> Response:
            path = request.url.path
            if self.keys and path not in OPEN_PATHS and path not in self.page and not self._authenticated(request):
                return JSONResponse(
                    ApiError(401, "missing or wrong API key (header X-API-Key)", "X-API-Key").body(), 401
                )
            too_large = content_length_error(request.headers.get("content-length"), self.limit)
            if too_large is not None:
                return JSONResponse(too_large.body(), 413)
            try:
                response: Response = await call_next(request)
                return response
            except Exception as e:  # the service must keep answering; log and report
                err = unwrap(e)
                if err is not None:
                    return JSONResponse(err.body(), err.status)
                if isinstance(e, _replica_gone()):  # a model/index replica died or is restarting: try again
                    log.warning("%s: a replica was unavailable (%s: %s)", path, type(e).__name__, str(e)[:200])
                    gone = ApiError(503, "a model or index replica is restarting; retry shortly", None)
                    return JSONResponse(gone.body(), 503, headers={"Retry-After": "1"})
                return JSONResponse(internal_error(e, path)[0], 500)

        # ---------------------------------------------------------------- helpers
        def _authenticated(self, request: Request) -> bool:
            """The request carries one of the keys (never true while auth is off: nobody is known then)."""
            return authenticated(request.headers, self.key_digests)

        async def model(self) -> dict[str, Any]:
            if self._model is None:
                self._model = await self.classifier.describe.remote()
            return self._model

        async def _body(self, request: Request) -> bytes:
            return await read_body(request, self.limit, self.args.body_timeout_s)

        async def _upload(self, request: Request) -> tuple[dict[str, np.ndarray], str | None]:
            return await read_upload(request, self.limit, self.args.body_timeout_s)

        async def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
            result: dict[str, Any] = await self.classifier.infer.remote(inputs)
            self.tally.pending.batch_sizes.append(result["batch_size"])
            return result

        def _json(self, body: bytes, model: type[BaseModel]) -> Any:
            try:
                return model.model_validate_json(body)
            except ValidationError as e:
                err = e.errors()[0]
                field = ".".join(str(x) for x in err["loc"]) or None
                raise ApiError(422, f"{field or 'body'}: {err['msg']}", field) from None

        # ---------------------------------------------------------------- routes
        @app.get("/healthz", summary="liveness: the ingress answers", responses=_errors(auth=False))
        async def healthz(self) -> dict[str, str]:
            return {"status": "ok"}

        @app.get(
            "/readyz",
            response_model=Ready,
            summary="readiness: model and index loaded (which ones: to a caller with an API key only)",
            responses={
                **_errors(auth=False),
                503: {
                    "description": "not ready (a `Ready` body), or starting up or unavailable (the error model)",
                    "content": {
                        "application/json": {
                            "schema": {
                                "anyOf": [
                                    {"$ref": "#/components/schemas/Ready"},
                                    {"$ref": "#/components/schemas/ErrorBody"},
                                ]
                            }
                        },
                        "text/plain": {"schema": {"type": "string"}},
                    },
                    "headers": _errors(auth=False)[503]["headers"],
                },
            },
        )
        async def readyz(self, request: Request) -> Response:
            try:
                model = await self.model()
                index = await self.retriever.ready.remote()
            except Exception as e:  # not ready yet is an answer, not an error; what failed goes to the log only
                log.warning("not ready: %s: %s", type(e).__name__, e)
                return JSONResponse(Ready(ready=False, detail="model or index not loaded yet").model_dump(), 503)
            if not self._authenticated(request):  # checkpoint names, digests and the index: not for anyone
                return JSONResponse(Ready(ready=True).model_dump())
            return JSONResponse(Ready(ready=True, model=model["model"], index=index).model_dump())

        @app.get(
            "/metrics",
            summary="Prometheus metrics of the whole application: requests, latency, batch sizes",
            response_class=Response,
            responses={
                200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"},
                **_errors(auth=False),
            },
        )
        async def metrics(self) -> Response:
            await self.tally.flush()
            return Response(await self.hub.render.remote(), media_type=CONTENT_TYPE_LATEST)

        @app.post(
            "/v1/classify",
            response_model=ClassifyResponse,
            openapi_extra=_CLASSIFY_BODY,
            summary="classify a patch: uploaded band files, an .npz, or an archived patch id",
            responses=_errors(*_BODY_ERRORS, 404),
        )
        async def classify(
            self,
            request: Request,
            threshold: Annotated[
                float | None, Query(gt=0, lt=1, description="default: the JSON body's, else the service's")
            ] = None,
        ) -> dict[str, Any]:
            model = await self.model()
            ctype = request.headers.get("content-type", "")
            patch_id = None
            if ctype.startswith("multipart/form-data"):
                from bigearth.api.uploads import assemble

                bands, _ = await self._upload(request)
                inputs = assemble(bands, {g: tuple(b) for g, b in model["groups"].items()})
            elif ctype.startswith("application/json"):
                req = self._json(await self._body(request), ClassifyByIdRequest)
                patch_id = req.patch_id
                threshold = threshold if threshold is not None else req.threshold
                inputs = await self.retriever.patch_arrays.remote(patch_id, model["groups"])
            else:
                raise ApiError(
                    415,
                    f"content type {ctype or 'none'!r}: send multipart/form-data (band files or "
                    '.npz) or application/json ({{"patch_id": ...}})',
                    "content-type",
                )
            threshold = self.args.threshold if threshold is None else threshold
            if not 0 < threshold < 1:
                raise ApiError(422, f"threshold must be between 0 and 1, got {threshold}", "threshold")
            result = await self._infer(inputs)
            names = model["model"]["classes"]
            probs = [float(p) for p in result["probabilities"]]
            return ClassifyResponse(
                patch_id=patch_id,
                probabilities=dict(zip(names, probs, strict=True)),
                labels=[n for n, p in zip(names, probs, strict=True) if p > threshold],
                threshold=threshold,
                model=model["model"],
            ).model_dump()

        @app.post(
            "/v1/search",
            response_model=SearchResponse,
            openapi_extra=_SEARCH_BODY,
            responses=_errors(*_BODY_ERRORS, 404),
            summary="similar patches: by patch id, by vector, or by an uploaded patch; filters; cross-modal",
        )
        async def search(self, request: Request) -> dict[str, Any]:
            ctype = request.headers.get("content-type", "")
            if ctype.startswith("multipart/form-data"):
                model = await self.model()
                bands, extra = await self._upload(request)
                if extra is not None and len(extra) > MAX_UPLOAD_REQUEST_CHARS:
                    raise ApiError(422, f"request: at most {MAX_UPLOAD_REQUEST_CHARS} characters", "request")
                req = self._json((extra or "{}").encode(), SearchRequest)
                if req.patch_id is not None or req.vector is not None:
                    raise ApiError(422, "an uploaded query takes no patch_id or vector", "request")
                wanted = req.query_modality or req.using
                groups = self._groups_for(model, wanted, "query_modality" if req.query_modality else "using")
                from bigearth.api.uploads import assemble

                result = await self._infer(assemble(bands, groups))
                vectors = {n: v.tolist() for n, v in result["vectors"].items()}
                response: dict[str, Any] = await self.retriever.search.remote(req.model_dump(mode="json"), vectors)
                return response
            if ctype.startswith("application/json"):
                req = self._json(await self._body(request), SearchRequest)
                if req.patch_id is None and req.vector is None:
                    raise ApiError(422, "give a patch_id or a vector (or upload a patch as multipart)", "patch_id")
                response = await self.retriever.search.remote(req.model_dump(mode="json"), None)
                return response
            raise ApiError(
                415, f"content type {ctype or 'none'!r}: send application/json or multipart/form-data", "content-type"
            )

        @staticmethod
        def _groups_for(model: dict[str, Any], wanted: str, field: str) -> dict[str, tuple[str, ...]]:
            """The groups an uploaded query must hold: those the model's vector `wanted` is computed from; a vector
            the model does not make is a 422 that says which it makes (and why, for early fusion)."""
            from bigearth.serving.deployments import missing_vectors

            vector_groups: dict[str, list[str]] = model["vector_groups"]
            if wanted not in vector_groups:
                raise ApiError(422, missing_vectors(wanted, list(vector_groups), model["model"]["name"]), field)
            groups = vector_groups[wanted]
            return {g: tuple(model["groups"][g]) for g in groups}

        @app.get(
            "/v1/patches",
            response_model=PatchList,
            summary="archived patch ids, a page at a time",
            responses=_errors(422),
        )
        async def patches(
            self,
            split: Split | None = None,
            offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
            limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        ) -> dict[str, Any]:
            page: dict[str, Any] = await self.retriever.patch_ids.remote(split, offset, limit)
            return page

        @app.post(
            "/v1/browse",
            response_model=BrowseResponse,
            summary="archived pairs a filter matches, a page at a time (with their payload: labels, place, date)",
            openapi_extra=_BROWSE_BODY,
            responses=_errors(400, 408, 413, 422),
        )
        async def browse(self, request: Request) -> dict[str, Any]:
            req = self._json(await self._body(request), BrowseRequest)
            page: dict[str, Any] = await self.retriever.browse.remote(req.model_dump(mode="json"))
            return page

        @app.get(
            "/v1/facets",
            response_model=Facets,
            summary="pairs per split, country, season and label; classes",
            responses=_errors(),
        )
        async def facets(self) -> dict[str, Any]:
            model = await self.model()
            found: dict[str, Any] = await self.retriever.facets.remote(model["model"]["classes"])
            return found

        # ---------------------------------------------------------------- the web page
        @app.get("/", include_in_schema=False)
        async def page_index(self) -> Response:
            return self._asset("index.html")

        @app.get("/web/{name}", include_in_schema=False)
        async def page_asset(self, name: str) -> Response:
            if name == "index.html" or name not in web.assets():
                raise ApiError(404, f"no page file {name!r}", "name")
            return self._asset(name)

        @staticmethod
        def _asset(name: str) -> Response:
            data, media_type = web.assets()[name]
            return Response(data, media_type=media_type, headers=web.HEADERS)

        @app.post(
            "/v1/quicklook",
            summary="true-colour quicklook of an uploaded patch (its B04/B03/B02, as for archived pairs)",
            response_class=Response,
            responses={200: _PNG, **_errors(*_BODY_ERRORS)},
            openapi_extra=_UPLOAD_BODY,
        )
        async def quicklook(self, request: Request, scale: Annotated[int, Query(ge=1, le=MAX_SCALE)] = 1) -> Response:
            from bigearth.api.uploads import assemble
            from bigearth.core.bands import GROUPS
            from bigearth.core.quicklook import rgb_png

            ctype = request.headers.get("content-type", "")
            if not ctype.startswith("multipart/form-data"):
                raise ApiError(415, f"content type {ctype or 'none'!r}: send multipart/form-data", "content-type")
            bands, _ = await self._upload(request)
            return Response(rgb_png(assemble(bands, {"s2_10m": GROUPS["s2_10m"]}), scale), media_type="image/png")

        @app.get(
            "/v1/patches/{patch_id}",
            response_model=PatchInfo,
            summary="metadata of an archived pair",
            responses=_errors(404, 422),
        )
        async def patch(self, patch_id: PatchId) -> dict[str, Any]:
            info: dict[str, Any] = await self.retriever.patch_info.remote(patch_id)
            return info

        @app.get(
            "/v1/patches/{patch_id}/rgb.png",
            summary="true-colour quicklook (B04/B03/B02, 2-98% stretch)",
            response_class=Response,
            responses={200: _PNG, **_errors(404, 422)},
        )
        async def rgb(self, patch_id: PatchId, scale: Annotated[int, Query(ge=1, le=MAX_SCALE)] = 1) -> Response:
            data = await self.retriever.rgb.remote(patch_id, scale)
            return Response(data, media_type="image/png")

    return Ingress
