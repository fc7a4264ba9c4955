"""The service's routes, one small function each, in four routers: probes (health, readiness, metrics), the models
(classify, segment, search), the archive (patches, browse, facets, quicklooks, reference maps) and the web page. Each
reaches the service's state (`bigearth.serving.service.Service`) through a dependency; none imports Ray.

No `from __future__ import annotations` here: FastAPI reads the route annotations (`Request`, ...) as objects.
"""

import base64
import logging
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from bigearth.api.schemas import (
    MAX_OFFSET,
    MAX_PAGE,
    MAX_SCALE,
    ApiError,
    BrowseRequest,
    BrowseResponse,
    ClassifyByIdRequest,
    ClassifyResponse,
    Facets,
    PatchId,
    PatchInfo,
    PatchList,
    Ready,
    SearchRequest,
    SearchResponse,
    SegmentByIdRequest,
    SegmentResponse,
)
from bigearth.api.uploads import assemble
from bigearth.retrieval.schema import Split
from bigearth.serving import web
from bigearth.serving.openapi import (
    BODY_ERRORS,
    BROWSE_BODY,
    CLASSIFY_BODY,
    MAX_UPLOAD_REQUEST_CHARS,
    METRICS_RESPONSES,
    PNG,
    READYZ_RESPONSES,
    SEARCH_BODY,
    SEGMENT_BODY,
    SEGMENT_PNG,
    UPLOAD_BODY,
    errors,
)
from bigearth.serving.retriever import missing_vectors
from bigearth.serving.service import Service, parse_json

log = logging.getLogger("bigearth.serve")


def current(request: Request) -> Service:
    """The service of the app answering `request`."""
    service: Service = request.app.state.service
    return service


def media_type(request: Request) -> str:
    """The request's media type: its Content-Type before any `;` parameter, lower-case ("" without one). Routes
    compare it exactly: `Application/JSON; charset=utf-8` is JSON, `application/jsonx` is not."""
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


#: the 415 of a route taking an upload or a JSON patch id
UPLOAD_OR_ID = 'send multipart/form-data (band files or .npz) or application/json ({"patch_id": ...})'

Svc = Annotated[Service, Depends(current)]
ScaleQuery = Annotated[int, Query(ge=1, le=MAX_SCALE)]

probes, model, archive, page = APIRouter(), APIRouter(), APIRouter(), APIRouter()


# ------------------------------------------------------------------------------------------------ probes
@probes.get("/healthz", summary="liveness: the ingress answers", responses=errors(auth=False))
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@probes.get(
    "/readyz",
    response_model=Ready,
    summary="readiness: model and index loaded (which ones: to a caller with an API key only)",
    responses=READYZ_RESPONSES,
)
async def readyz(request: Request, service: Svc) -> Response:
    try:
        described = await service.model()
        index = await service.retriever.ready()
    except Exception as e:  # not ready yet is an answer, not an error; what failed goes to the log only
        log.warning("not ready: %s: %s", type(e).__name__, e)
        return JSONResponse(Ready(ready=False, detail="model or index not loaded yet").model_dump(), 503)
    if not service.authenticated(request.headers):  # checkpoint names, digests and the index: not for anyone
        return JSONResponse(Ready(ready=True).model_dump())
    return JSONResponse(Ready(ready=True, model=described["model"], index=index).model_dump())


@probes.get(
    "/metrics",
    summary="Prometheus metrics of the whole application: requests, latency, batch sizes",
    response_class=Response,
    responses=METRICS_RESPONSES,
)
async def metrics(service: Svc) -> Response:
    await service.tally.flush()
    return Response(await service.metrics.render(), media_type=CONTENT_TYPE_LATEST)


# ------------------------------------------------------------------------------------------------ the model
@model.post(
    "/v1/classify",
    response_model=ClassifyResponse,
    openapi_extra=CLASSIFY_BODY,
    summary="classify a patch: uploaded band files, an .npz, or an archived patch id",
    responses=errors(*BODY_ERRORS, 404),
)
async def classify(
    request: Request,
    service: Svc,
    threshold: Annotated[
        float | None, Query(gt=0, lt=1, description="default: the JSON body's, else the service's")
    ] = None,
) -> dict[str, Any]:
    described = await service.model()
    ctype, kind = request.headers.get("content-type", ""), media_type(request)
    patch_id = None
    if kind == "multipart/form-data":
        bands, _ = await service.upload(request)
        inputs = assemble(bands, {g: tuple(b) for g, b in described["groups"].items()})
    elif kind == "application/json":
        req = parse_json(await service.body(request), ClassifyByIdRequest)
        patch_id = req.patch_id
        threshold = threshold if threshold is not None else req.threshold
        inputs = await service.retriever.patch_arrays(patch_id, described["groups"])
    else:
        raise ApiError(415, f"content type {ctype or 'none'!r}: {UPLOAD_OR_ID}", "content-type")
    threshold = service.args.threshold if threshold is None else threshold
    if not 0 < threshold < 1:
        raise ApiError(422, f"threshold must be between 0 and 1, got {threshold}", "threshold")
    result = await service.infer(inputs)
    names = described["model"]["classes"]
    probs = [float(p) for p in result["probabilities"]]
    return ClassifyResponse(
        patch_id=patch_id,
        probabilities=dict(zip(names, probs, strict=True)),
        labels=[n for n, p in zip(names, probs, strict=True) if p > threshold],
        threshold=threshold,
        model=described["model"],
    ).model_dump()


@model.post(
    "/v1/segment",
    response_model=SegmentResponse,
    openapi_extra=SEGMENT_BODY,
    summary="the land-cover map of a patch: uploaded band files, an .npz, or an archived patch id",
    responses={200: SEGMENT_PNG, **errors(*BODY_ERRORS, 404)},
)
async def segment(
    request: Request,
    service: Svc,
    format: Annotated[
        Literal["json", "png"] | None,
        Query(description="png: the map's PNG itself (as `Accept: image/png`); default JSON"),
    ] = None,
) -> Response:
    from bigearth.core.quicklook import area_shares, class_map_png, legend, scored_pixels

    segmenter, described = await service.seg_model()  # a 404 naming the option when no model is served
    groups = {g: tuple(b) for g, b in described["groups"].items()}
    ctype, kind = request.headers.get("content-type", ""), media_type(request)
    patch_id = None
    if kind == "multipart/form-data":
        bands, _ = await service.upload(request)
        inputs = assemble(bands, groups)
    elif kind == "application/json":
        patch_id = parse_json(await service.body(request), SegmentByIdRequest).patch_id
        inputs = await service.retriever.patch_arrays(patch_id, described["groups"])
    else:
        raise ApiError(415, f"content type {ctype or 'none'!r}: {UPLOAD_OR_ID}", "content-type")
    indices = np.asarray((await segmenter.segment(inputs))["map"], np.uint8)
    png = class_map_png(indices)
    accept = request.headers.get("accept", "")
    if format == "png" or (format is None and "image/png" in accept and "application/json" not in accept):
        return Response(png, media_type="image/png")
    classes = described["model"]["classes"]
    return JSONResponse(
        SegmentResponse(
            patch_id=patch_id,
            classes=classes,
            shares=area_shares(indices),
            scored_pixels=scored_pixels(indices),
            png=base64.b64encode(png).decode("ascii"),
            legend=legend(classes),
            model=described["model"],
        ).model_dump()
    )


@model.post(
    "/v1/search",
    response_model=SearchResponse,
    openapi_extra=SEARCH_BODY,
    responses=errors(*BODY_ERRORS, 404),
    summary="similar patches: by patch id, by vector, or by an uploaded patch; filters; cross-modal",
)
async def search(request: Request, service: Svc) -> dict[str, Any]:
    ctype, kind = request.headers.get("content-type", ""), media_type(request)
    if kind == "multipart/form-data":
        return await _search_upload(request, service)
    if kind == "application/json":
        req = parse_json(await service.body(request), SearchRequest)
        if req.patch_id is None and req.vector is None:
            raise ApiError(422, "give a patch_id or a vector (or upload a patch as multipart)", "patch_id")
        return await service.retriever.search(req.model_dump(mode="json"), None)
    raise ApiError(
        415, f"content type {ctype or 'none'!r}: send application/json or multipart/form-data", "content-type"
    )


async def _search_upload(request: Request, service: Service) -> dict[str, Any]:
    """A search by an uploaded patch: its vectors computed by the classifier, then searched with."""
    described = await service.model()
    bands, extra = await service.upload(request)
    if extra is not None and len(extra) > MAX_UPLOAD_REQUEST_CHARS:
        raise ApiError(422, f"request: at most {MAX_UPLOAD_REQUEST_CHARS} characters", "request")
    req = parse_json((extra or "{}").encode(), SearchRequest)
    if req.patch_id is not None or req.vector is not None:
        raise ApiError(422, "an uploaded query takes no patch_id or vector", "request")
    wanted = req.query_modality or req.using
    groups = groups_for(described, wanted, "query_modality" if req.query_modality else "using")
    result = await service.infer(assemble(bands, groups))
    vectors = {n: v.tolist() for n, v in result["vectors"].items()}
    return await service.retriever.search(req.model_dump(mode="json"), vectors)


def groups_for(described: dict[str, Any], wanted: str, field: str) -> dict[str, tuple[str, ...]]:
    """The groups an uploaded query must hold: those the model's vector `wanted` is computed from; a vector the
    model does not make is a 422 that says which it makes (and why, for early fusion)."""
    vector_groups: dict[str, list[str]] = described["vector_groups"]
    if wanted not in vector_groups:
        message = missing_vectors(wanted, list(vector_groups), bool(described.get("early_fusion")))
        raise ApiError(422, message, field)
    return {g: tuple(described["groups"][g]) for g in vector_groups[wanted]}


# ------------------------------------------------------------------------------------------------ the archive
@archive.get(
    "/v1/patches",
    response_model=PatchList,
    summary="archived patch ids, a page at a time",
    responses=errors(422),
)
async def patches(
    service: Svc,
    split: Split | None = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> dict[str, Any]:
    return await service.retriever.patch_ids(split, offset, limit)


@archive.post(
    "/v1/browse",
    response_model=BrowseResponse,
    summary="archived pairs a filter matches, a page at a time (with their payload: labels, place, date)",
    openapi_extra=BROWSE_BODY,
    responses=errors(400, 408, 413, 422),
)
async def browse(request: Request, service: Svc) -> dict[str, Any]:
    req = parse_json(await service.body(request), BrowseRequest)
    return await service.retriever.browse(req.model_dump(mode="json"))


@archive.get(
    "/v1/facets",
    response_model=Facets,
    summary="pairs per split, country, season and label; classes",
    responses=errors(),
)
async def facets(service: Svc) -> dict[str, Any]:
    described = await service.model()
    facets = await service.retriever.facets(described["model"]["classes"])
    return {**facets, "segmentation": service.segmenter is not None}


@archive.post(
    "/v1/quicklook",
    summary="true-colour quicklook of an uploaded patch (its B04/B03/B02, as for archived pairs)",
    response_class=Response,
    responses={200: PNG, **errors(*BODY_ERRORS)},
    openapi_extra=UPLOAD_BODY,
)
async def quicklook(request: Request, service: Svc, scale: ScaleQuery = 1) -> Response:
    from bigearth.core.bands import GROUPS
    from bigearth.core.quicklook import rgb_png

    ctype = request.headers.get("content-type", "")
    if media_type(request) != "multipart/form-data":
        raise ApiError(415, f"content type {ctype or 'none'!r}: send multipart/form-data", "content-type")
    bands, _ = await service.upload(request)
    return Response(rgb_png(assemble(bands, {"s2_10m": GROUPS["s2_10m"]}), scale), media_type="image/png")


@archive.get(
    "/v1/patches/{patch_id}",
    response_model=PatchInfo,
    summary="metadata of an archived pair",
    responses=errors(404, 422),
)
async def patch(service: Svc, patch_id: PatchId) -> dict[str, Any]:
    return await service.retriever.patch_info(patch_id)


@archive.get(
    "/v1/patches/{patch_id}/rgb.png",
    summary="true-colour quicklook (B04/B03/B02, 2-98% stretch)",
    response_class=Response,
    responses={200: PNG, **errors(404, 422)},
)
async def rgb(service: Svc, patch_id: PatchId, scale: ScaleQuery = 1) -> Response:
    return Response(await service.retriever.rgb(patch_id, scale), media_type="image/png")


@archive.get(
    "/v1/patches/{patch_id}/reference.png",
    summary="the archive's reference map of a pair (its CLC codes in the 19 classes' colours; no class transparent)",
    response_class=Response,
    responses={200: PNG, **errors(404, 422)},
)
async def reference(service: Svc, patch_id: PatchId) -> Response:
    return Response(await service.retriever.reference_png(patch_id), media_type="image/png")


# ------------------------------------------------------------------------------------------------ the web page
@page.get("/", include_in_schema=False)
async def page_index() -> Response:
    return _asset("index.html")


@page.get("/web/{name}", include_in_schema=False)
async def page_asset(name: str) -> Response:
    if name == "index.html" or name not in web.assets():
        raise ApiError(404, f"no page file {name!r}", "name")
    return _asset(name)


def _asset(name: str) -> Response:
    data, media_type = web.assets()[name]
    return Response(data, media_type=media_type, headers=web.HEADERS)


#: in the order of the document's paths
ROUTERS = (probes, model, archive, page)
