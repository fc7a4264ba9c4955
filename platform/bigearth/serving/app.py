"""The Ray Serve application: an ingress (FastAPI) composing a `Classifier` (model replicas, dynamic batching)
and a `Retriever` (the vector index and the shard set).

    serve run bigearth.serving.app:build checkpoint=RUN index=INDEX data=SHARDS    # or serve/config.yaml
    bigearth serve --checkpoint RUN --index INDEX --data SHARDS                     # the same, locally

Routes (the OpenAPI page at /docs is the reference): POST /v1/classify, POST /v1/search, GET /v1/patches/{id},
GET /v1/patches/{id}/rgb.png, GET /healthz, GET /readyz, GET /metrics. Bad input gets a 4xx JSON error
(`bigearth.api.ErrorBody`) naming the field; the service keeps answering.
"""

import hashlib
import hmac
import logging
import os
import time
from typing import Any

import numpy as np
from fastapi import Request, Response  # real annotations (no `from __future__ import annotations`): FastAPI reads them
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from bigearth.api import (
    ApiError,
    ClassifyByIdRequest,
    ClassifyResponse,
    ModelInfo,
    PatchInfo,
    PatchList,
    Ready,
    SearchHit,
    SearchRequest,
    SearchResponse,
)
from bigearth.labels import BEN19 as _BEN19

log = logging.getLogger("bigearth.serve")


class AppArgs(BaseModel):
    """Arguments of the application builder (`serve run ... key=value`, or `args:` in serve/config.yaml)."""

    checkpoint: str = Field(description="checkpoint folder or run folder (its best checkpoint); path or URL")
    index: str = Field(description="embedded-engine folder, or http(s):// Qdrant URL")
    data: str = Field(description="the shard set (patch lookups, quicklooks, classify by patch id)")
    collection: str = "bigearthnet"
    qdrant_api_key: str | None = Field(None, description="default: $QDRANT_API_KEY")
    classifier_replicas: int = Field(1, ge=1)
    classifier_max_replicas: int | None = Field(None, description="> classifier_replicas: autoscale up to this")
    max_batch_size: int = Field(32, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=1)
    gpus_per_classifier: float = Field(0, ge=0, description="1 on a GPU cluster")
    replica_cpus: float = Field(1.0, ge=0, description="CPUs reserved per classifier replica")
    retriever_replicas: int = Field(1, ge=1, description="keep 1 for the embedded engine (one process per folder)")
    max_ongoing_requests: int = Field(128, ge=1, description="per replica; must exceed max_batch_size to batch")
    api_keys: list[str] = Field(default_factory=list, description="accepted X-API-Key values (+ $BIGEARTH_API_KEYS)")
    max_body_mb: float = Field(16.0, gt=0)
    threshold: float = Field(0.5, gt=0, lt=1)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return [k for k in v.split(",") if k] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_reader_per_folder(self) -> "AppArgs":
        if self.retriever_replicas > 1 and not self.index.startswith(("http://", "https://")):
            raise ValueError(
                f"retriever_replicas={self.retriever_replicas}: the embedded engine at {self.index!r} is opened by one "
                "process; use 1, or a Qdrant server (http(s):// URL) for several replicas"
            )
        return self

    def keys(self) -> set[str]:
        env = os.environ.get("BIGEARTH_API_KEYS", "")
        return {k.strip() for k in [*self.api_keys, *env.split(",")] if k.strip()}


# ------------------------------------------------------------------------------------------------ Classifier
class Classifier:
    """Model replica: one model, requests batched by `@serve.batch` (set in `build`)."""

    def __init__(self, checkpoint: str, cpus: float) -> None:
        import torch

        from bigearth.data import groups_for
        from bigearth.labels import class_names
        from bigearth.retrieval.embed import encoder_groups, vector_sizes
        from bigearth.storage import StorageOptions, join, open_fs
        from bigearth.training.checkpoints import MODEL_FILE, find_best, load_model

        storage = StorageOptions.from_env()
        best = find_best(checkpoint, storage=storage)
        self.model, meta = load_model(best, storage=storage)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        if self.device.type == "cpu" and cpus >= 1:
            torch.set_num_threads(int(cpus))
        fs, root = open_fs(best, storage)
        digest = hashlib.sha256(fs.cat(join(root, MODEL_FILE))).hexdigest()[:12]
        classes = list(class_names(int(meta["num_classes"])))  # type: ignore[arg-type]
        name = meta["model"]["name"] + (f"/{meta['model']['fusion']}" if "fusion" in meta["model"] else "")
        self.info = ModelInfo(
            name=name,
            version=f"{best.rstrip('/').rsplit('/', 2)[-2]}/{best.rstrip('/').rsplit('/', 1)[-1]}@{digest}",
            bands=list(meta["bands"]) if not isinstance(meta["bands"], str) else [meta["bands"]],
            num_classes=len(classes),
            classes=classes,
        )
        self.groups = {g: list(b) for g, b in groups_for(meta["bands"]).items()}
        self.encoders = {n: sorted(g) for n, g in encoder_groups(self.model).items()}
        self.vectors = vector_sizes(self.model)

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.info.model_dump(),
            "groups": self.groups,
            "encoders": self.encoders,
            "vectors": self.vectors,
        }

    async def infer(self, items: list[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
        """A batch of patches (`{group: [1,C,H,W]}`; the same groups within a batch are stacked together) ->
        per patch: probabilities (when every encoder's input is present), vectors, and the batch size."""
        import torch

        from bigearth.retrieval.embed import embed

        results: list[dict[str, Any]] = [{} for _ in items]
        by_keys: dict[tuple[str, ...], list[int]] = {}
        for i, item in enumerate(items):
            by_keys.setdefault(tuple(sorted(item)), []).append(i)
        for keys, rows in by_keys.items():
            batch = {k: torch.from_numpy(np.concatenate([items[i][k] for i in rows])).to(self.device) for k in keys}
            probs, vectors = embed(self.model, batch)
            for j, i in enumerate(rows):
                results[i] = {
                    "probabilities": None if probs is None else probs[j].cpu().numpy(),
                    "vectors": {n: v[j].cpu().numpy() for n, v in vectors.items()},
                    "batch_size": len(items),
                }
        return results


# ------------------------------------------------------------------------------------------------ Retriever
class Retriever:
    """The vector index and the shard set (patch lookups)."""

    def __init__(self, index: str, collection: str, data: str, api_key: str | None) -> None:
        from bigearth.patches import PatchStore
        from bigearth.retrieval import open_index
        from bigearth.storage import StorageOptions

        self.index = open_index(index, collection, api_key=api_key)
        self.meta = self.index.metadata()
        self.index.count()  # fail at start-up, not on the first request, when the index cannot be read
        self.store = PatchStore(data, StorageOptions.from_env())

    def ready(self) -> dict[str, Any]:
        return {
            "collection": self.index.collection,
            "points": self.index.count(),  # live: a re-index into a server shows up
            "vectors": self.meta["vectors"],
            "model": self.meta.get("model"),
            "pairs_in_shards": len(self.store),
        }

    def _patch(self, patch_id: str) -> None:
        from bigearth.patches import UnknownPatch

        try:
            self.store.locate(patch_id)
        except ValueError as e:
            raise ApiError(422, str(e), field="patch_id") from None
        except UnknownPatch as e:
            raise ApiError(404, str(e), field="patch_id") from None

    def patch_ids(self, split: str | None, offset: int, limit: int) -> dict[str, Any]:
        try:
            ids = self.store.ids(split, offset, limit)
        except KeyError as e:
            raise ApiError(422, str(e.args[0]), field="split") from None
        total = self.store.splits()[split] if split else len(self.store)
        return {"patch_ids": ids, "offset": offset, "total": total, "split": split}

    def patch_info(self, patch_id: str) -> dict[str, Any]:
        self._patch(patch_id)
        m = self.store.metadata(patch_id)
        return PatchInfo(
            patch_id=m["patch_id"],
            s1_name=m["s1_name"],
            labels=m["labels"],
            labels43=m["labels43"],
            split=m["split"],
            country=m["country"],
            tile=m["tile"],
            s2_acquisition=m["s2_acquisition"].isoformat() + "Z",
            s1_acquisition=m["s1_acquisition"].isoformat() + "Z",
            epsg=m["epsg"],
            ulx=m["ulx"],
            uly=m["uly"],
            location=m["location"],
            snow=m["contains_seasonal_snow"],
            cloud=m["contains_cloud_or_shadow"],
        ).model_dump()

    def patch_arrays(self, patch_id: str, groups: dict[str, list[str]]) -> dict[str, np.ndarray]:
        self._patch(patch_id)
        return self.store.arrays(patch_id, {g: tuple(b) for g, b in groups.items()})

    def rgb(self, patch_id: str, scale: int) -> bytes:
        from bigearth.bands import GROUPS
        from bigearth.quicklook import rgb_png

        self._patch(patch_id)
        return rgb_png(self.store.arrays(patch_id, {"s2_10m": GROUPS["s2_10m"]}), scale)

    def search(self, req: dict[str, Any], query_vectors: dict[str, list[float]] | None) -> dict[str, Any]:
        from bigearth.retrieval import SearchFilter, VectorIndexError

        r = SearchRequest.model_validate(req)
        sizes = self.meta["vectors"]
        query_modality = r.query_modality or r.using
        for field, name in (("using", r.using), ("query_modality", query_modality)):
            if name not in sizes:
                raise ApiError(422, f"this index has no {name!r} vectors; it has {sorted(sizes)}", field=field)
        t = time.perf_counter()
        exclude: list[str] = []
        if r.vector is not None:
            vector: Any = r.vector
        elif query_vectors is not None:
            if query_modality not in query_vectors:
                raise ApiError(
                    422,
                    f"the uploaded patch gives {sorted(query_vectors)} vectors, not {query_modality!r}: upload "
                    f"the bands of that modality",
                    field="query_modality",
                )
            vector = query_vectors[query_modality]
        elif r.patch_id is not None:
            from bigearth.archive.names import PatchNameError, check_safe_id

            try:
                check_safe_id(r.patch_id)
            except PatchNameError as e:
                raise ApiError(422, str(e), field="patch_id") from None
            record = self.index.retrieve([r.patch_id], with_vectors=True).get(r.patch_id)
            if record is None:
                raise ApiError(404, f"patch {r.patch_id!r} is not in the index", field="patch_id")
            vector = record.vectors[query_modality]
            exclude = [] if r.include_query else [r.patch_id]
        else:
            raise ApiError(422, "give a patch_id, a vector, or upload a patch", field="patch_id")
        flt = r.filter or SearchFilter()
        if self.meta.get("num_classes", 19) == 19:
            bad = [x for x in [*(flt.labels_any or []), *(flt.labels_all or [])] if x not in _BEN19]
            if bad:
                raise ApiError(422, f"unknown 19-class label(s) {bad}; expected one of {list(_BEN19)}", field="filter")
        try:
            hits = self.index.search(vector, r.using, r.k, flt, exact=r.exact, exclude=exclude)
        except VectorIndexError as e:
            raise ApiError(422, str(e), field="using") from None
        except ValueError as e:
            raise ApiError(422, str(e), field="vector") from None
        return SearchResponse(
            hits=[SearchHit(patch_id=h.patch_id, score=h.score, payload=h.payload) for h in hits],
            k=r.k,
            using=r.using,
            query_modality=query_modality,
            query_patch_id=r.patch_id,
            took_ms=round((time.perf_counter() - t) * 1000, 3),
        ).model_dump()


# ------------------------------------------------------------------------------------------------ Ingress
def _make_ingress_app() -> Any:
    from fastapi import FastAPI

    return FastAPI(
        title="BigEarthNet-MM classification and retrieval",
        version="1",
        description="Multi-label land-cover classification and content-based retrieval of Sentinel-1/Sentinel-2 "
        "patch pairs. Errors are `{error, message, field}` JSON with a 4xx status.",
    )


_CLASSIFY_BODY = {
    "requestBody": {
        "content": {
            "application/json": {"schema": ClassifyByIdRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "description": "one GeoTIFF per band, the form field or file name naming the band "
                    "(B01..B12, B8A, VV, VH), or one .npz file of arrays named by band or group",
                    "additionalProperties": {"type": "string", "format": "binary"},
                }
            },
        },
        "required": True,
    }
}
_SEARCH_BODY = {
    "requestBody": {
        "content": {
            "application/json": {"schema": SearchRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "description": "an uploaded query patch (band GeoTIFFs or one .npz, as for /v1/classify) plus "
                    "a `request` field holding the SearchRequest JSON without patch_id/vector",
                    "properties": {"request": {"type": "string"}},
                    "additionalProperties": {"type": "string", "format": "binary"},
                }
            },
        },
        "required": True,
    }
}


def make_ingress(serve: Any, fastapi_app: Any) -> Any:
    """The ingress deployment class bound to a FastAPI app (built in a function: no Ray import at module load)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

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
        err = _unwrap(exc) or ApiError(500, str(exc))
        return JSONResponse(err.body(), status_code=err.status)

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Response:
        ingress = replica.get("ingress")
        if ingress is None:
            return JSONResponse(ApiError(503, "starting up").body(), 503)
        t = time.perf_counter()
        response: Response = await ingress._guarded(request, call_next, _unwrap)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        ingress.requests.labels(route, str(response.status_code)).inc()
        ingress.latency.labels(route).observe(time.perf_counter() - t)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        return JSONResponse(ApiError(422, f"{field or 'request'}: {err.get('msg')}", field or None).body(), 422)

    @serve.ingress(app)
    class Ingress:
        def __init__(self, classifier: Any, retriever: Any, args: dict[str, Any]) -> None:
            self.classifier, self.retriever = classifier, retriever
            self.args = AppArgs.model_validate(args)
            self.keys = self.args.keys()
            self.limit = int(self.args.max_body_mb * 1024 * 1024)
            self._model: dict[str, Any] | None = None
            self.registry = CollectorRegistry()
            self.requests = Counter("bigearth_requests", "HTTP requests", ["route", "status"], registry=self.registry)
            self.latency = Histogram(
                "bigearth_request_seconds",
                "request latency",
                ["route"],
                registry=self.registry,
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            )
            self.batch_sizes = Histogram(
                "bigearth_classifier_batch_size",
                "batch size each classifier call ran in",
                registry=self.registry,
                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            )
            replica["ingress"] = self

        async def _guarded(self, request: Request, call_next: Any, unwrap: Any) -> Response:
            path = request.url.path
            open_paths = ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/redoc")
            if self.keys and not path.startswith(open_paths):
                given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix(
                    "Bearer "
                )
                if not any(hmac.compare_digest(given.encode(), k.encode()) for k in self.keys):
                    return JSONResponse(
                        ApiError(401, "missing or wrong API key (header X-API-Key)", "X-API-Key").body(), 401
                    )
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.limit):
                return JSONResponse(
                    ApiError(
                        413, f"request body of {length} bytes is over the limit of {self.limit} bytes", "body"
                    ).body(),
                    413,
                )
            try:
                response: Response = await call_next(request)
                return response
            except Exception as e:  # the service must keep answering; log and report
                err = unwrap(e)
                if err is not None:
                    return JSONResponse(err.body(), err.status)
                log.exception("unhandled error on %s", path)
                return JSONResponse(
                    {"error": "internal", "message": f"{type(e).__name__}: {e}"[:500], "field": None}, 500
                )

        # ---------------------------------------------------------------- helpers
        async def model(self) -> dict[str, Any]:
            if self._model is None:
                self._model = await self.classifier.describe.remote()
            return self._model

        async def _body(self, request: Request) -> bytes:
            body = await request.body()
            if len(body) > self.limit:
                raise ApiError(413, f"request body is over the limit of {self.limit} bytes", "body")
            return body

        async def _upload(self, request: Request) -> tuple[dict[str, np.ndarray], str | None]:
            """Bands from a multipart upload, and the `request` form field if any."""
            from bigearth.serving.inputs import from_geotiffs, from_npz

            await self._body(request)
            try:
                form = await request.form(max_files=32, max_fields=4, max_part_size=self.limit)
            except Exception as e:  # a malformed multipart body is the client's error
                raise ApiError(400, f"unreadable multipart body: {e}", "body") from None
            files, extra = [], None
            for key, value in form.multi_items():
                if isinstance(value, str):
                    if key != "request":
                        raise ApiError(422, f"unexpected form field {key!r}; expected band files and `request`", key)
                    extra = value
                else:
                    files.append((key, value.filename, await value.read()))
            if not files:
                raise ApiError(422, "no files uploaded: send band GeoTIFFs or one .npz", "files")
            npz = [f for f in files if (f[1] or f[0]).lower().endswith(".npz")]
            if npz:
                if len(files) > 1:
                    raise ApiError(422, "send either one .npz or band GeoTIFFs, not both", "files")
                return from_npz(npz[0][2], npz[0][1] or npz[0][0]), extra
            return from_geotiffs(files), extra

        async def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
            result: dict[str, Any] = await self.classifier.infer.remote(inputs)
            self.batch_sizes.observe(result["batch_size"])
            return result

        def _json(self, body: bytes, model: type[BaseModel]) -> Any:
            try:
                return model.model_validate_json(body)
            except ValidationError as e:
                err = e.errors()[0]
                field = ".".join(str(x) for x in err["loc"]) or None
                raise ApiError(422, f"{field or 'body'}: {err['msg']}", field) from None

        # ---------------------------------------------------------------- routes
        @app.get("/healthz", summary="liveness: the ingress answers")
        async def healthz(self) -> dict[str, str]:
            return {"status": "ok"}

        @app.get("/readyz", response_model=Ready, summary="readiness: model and index loaded")
        async def readyz(self) -> Response:
            try:
                model = await self.model()
                index = await self.retriever.ready.remote()
            except Exception as e:  # not ready yet is an answer, not an error
                return JSONResponse(Ready(ready=False, detail=f"{type(e).__name__}: {e}"[:300]).model_dump(), 503)
            return JSONResponse(Ready(ready=True, model=model["model"], index=index).model_dump())

        @app.get("/metrics", summary="Prometheus metrics: requests, latency, classifier batch sizes")
        async def metrics(self) -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        @app.post(
            "/v1/classify",
            response_model=ClassifyResponse,
            openapi_extra=_CLASSIFY_BODY,
            summary="classify a patch: uploaded band files, an .npz, or an archived patch id",
        )
        async def classify(self, request: Request, threshold: float | None = None) -> dict[str, Any]:
            model = await self.model()
            ctype = request.headers.get("content-type", "")
            patch_id = None
            if ctype.startswith("multipart/form-data"):
                from bigearth.serving.inputs import assemble

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
                labels=[n for n, p in zip(names, probs, strict=True) if p >= threshold],
                threshold=threshold,
                model=model["model"],
            ).model_dump()

        @app.post(
            "/v1/search",
            response_model=SearchResponse,
            openapi_extra=_SEARCH_BODY,
            summary="similar patches: by patch id, by vector, or by an uploaded patch; filters; cross-modal",
        )
        async def search(self, request: Request) -> dict[str, Any]:
            ctype = request.headers.get("content-type", "")
            if ctype.startswith("multipart/form-data"):
                model = await self.model()
                bands, extra = await self._upload(request)
                req = self._json((extra or "{}").encode(), SearchRequest)
                if req.patch_id is not None or req.vector is not None:
                    raise ApiError(422, "an uploaded query takes no patch_id or vector", "request")
                wanted = req.query_modality or req.using
                groups = self._groups_for(model, wanted, bands)
                from bigearth.serving.inputs import assemble

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
        def _groups_for(model: dict[str, Any], wanted: str, bands: dict[str, np.ndarray]) -> dict[str, tuple[str, ...]]:
            """The groups an uploaded query must hold: every encoder's for `fused`, else that modality's."""
            encoders: dict[str, list[str]] = model["encoders"]
            groups = encoders[wanted] if wanted in encoders else sorted({g for gs in encoders.values() for g in gs})
            return {g: tuple(model["groups"][g]) for g in groups}

        @app.get("/v1/patches", response_model=PatchList, summary="archived patch ids, a page at a time")
        async def patches(self, split: str | None = None, offset: int = 0, limit: int = 100) -> dict[str, Any]:
            if offset < 0:
                raise ApiError(422, f"offset must be >= 0, got {offset}", "offset")
            if not 1 <= limit <= 10000:
                raise ApiError(422, f"limit must be 1..10000, got {limit}", "limit")
            page: dict[str, Any] = await self.retriever.patch_ids.remote(split, offset, limit)
            return page

        @app.get("/v1/patches/{patch_id}", response_model=PatchInfo, summary="metadata of an archived pair")
        async def patch(self, patch_id: str) -> dict[str, Any]:
            info: dict[str, Any] = await self.retriever.patch_info.remote(patch_id)
            return info

        @app.get(
            "/v1/patches/{patch_id}/rgb.png",
            summary="true-colour quicklook (B04/B03/B02, 2-98% stretch)",
            response_class=Response,
            responses={200: {"content": {"image/png": {}}}},
        )
        async def rgb(self, patch_id: str, scale: int = 1) -> Response:
            if not 1 <= scale <= 8:
                raise ApiError(422, f"scale must be 1..8, got {scale}", "scale")
            data = await self.retriever.rgb.remote(patch_id, scale)
            return Response(data, media_type="image/png")

    return Ingress


def build(args: AppArgs) -> Any:
    """The application: `Ingress(Classifier, Retriever)` with replicas, batching and resources from `args`."""
    from ray import serve

    key = args.qdrant_api_key or os.environ.get("QDRANT_API_KEY")
    cls_opts: dict[str, Any] = {
        "max_ongoing_requests": args.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": args.replica_cpus, "num_gpus": args.gpus_per_classifier},
    }
    if args.classifier_max_replicas and args.classifier_max_replicas > args.classifier_replicas:
        cls_opts["autoscaling_config"] = {
            "min_replicas": args.classifier_replicas,
            "max_replicas": args.classifier_max_replicas,
            "target_ongoing_requests": max(2, args.max_batch_size // 2),
        }
    else:
        cls_opts["num_replicas"] = args.classifier_replicas
    classifier_cls = type(
        "Classifier",
        (Classifier,),
        {
            "infer": serve.batch(max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_timeout_s)(
                Classifier.infer
            )
        },
    )
    classifier = serve.deployment(name="Classifier", **cls_opts)(classifier_cls).bind(
        args.checkpoint, args.replica_cpus
    )
    retriever = serve.deployment(
        name="Retriever",
        num_replicas=args.retriever_replicas,
        max_ongoing_requests=args.max_ongoing_requests,
        ray_actor_options={"num_cpus": min(args.replica_cpus, 1.0)},
    )(Retriever).bind(args.index, args.collection, args.data, key)
    ingress_cls = make_ingress(serve, _make_ingress_app())
    ingress = serve.deployment(
        name="Ingress", max_ongoing_requests=args.max_ongoing_requests * 2, ray_actor_options={"num_cpus": 0}
    )(ingress_cls)
    return ingress.bind(classifier, retriever, args.model_dump())
