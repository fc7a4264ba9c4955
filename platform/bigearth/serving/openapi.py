"""The OpenAPI document of the service, the contract (docs/api.md): what FastAPI sees of the routes plus what it
cannot see (the bodies the routes read by hand, the API key), and the error statuses each operation lists."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from bigearth.api.schemas import (
    ERROR_STATUSES,
    BrowseRequest,
    ClassifyByIdRequest,
    ErrorBody,
    SearchRequest,
    SegmentByIdRequest,
)
from bigearth.serving.guard import OPEN_PATHS

#: The JSON request bodies the routes read by hand (a route that also takes multipart cannot declare a FastAPI body
#: parameter): their schemas join the document's components, where the operations refer to them.
BODY_MODELS: tuple[type[BaseModel], ...] = (ClassifyByIdRequest, SegmentByIdRequest, SearchRequest, BrowseRequest)
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


def new_api() -> ServiceApi:
    """The service's app, no route yet (`bigearth.serving.http.create_app` adds them)."""
    return ServiceApi(
        title="BigEarthNet-MM classification, segmentation and retrieval",
        version="1",
        description="Multi-label land-cover classification, land-cover maps (segmentation) and content-based "
        "retrieval of Sentinel-1/Sentinel-2 patch pairs. Every error is `{error, message, field}` JSON (`ErrorBody`); "
        "each operation lists the statuses it answers. With API keys configured, every path but the probes, "
        "/metrics, the docs and the web page needs one (`X-API-Key` or `Authorization: Bearer`).",
    )


#: the `request` field of an uploaded search (a SearchRequest without patch id or vector: far shorter)
MAX_UPLOAD_REQUEST_CHARS = 65536


def errors(*statuses: int, auth: bool = True) -> dict[int | str, dict[str, Any]]:
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
BODY_ERRORS = (400, 408, 413, 415, 422)
PNG = {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}, "description": "a PNG"}
PATCH_FILES = {
    "schema": {
        "type": "object",
        "description": "one GeoTIFF per band, the form field or file name naming the band "
        "(B01..B12, B8A, VV, VH), or one .npz file of arrays named by band or group; at most 32 files",
        "additionalProperties": {"type": "string", "format": "binary"},
        "maxProperties": 32,
    }
}
CLASSIFY_BODY = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ClassifyByIdRequest"}},
            "multipart/form-data": PATCH_FILES,
        },
        "required": True,
    }
}
SEGMENT_BODY = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SegmentByIdRequest"}},
            "multipart/form-data": PATCH_FILES,
        },
        "required": True,
    }
}
#: /v1/segment's answer: JSON (`SegmentResponse`, from the route's response model) or, when asked, the PNG itself
SEGMENT_PNG = {
    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
    "description": "the map (`SegmentResponse`), or its paletted PNG with `format=png` or `Accept: image/png`",
}
UPLOAD_BODY = {
    "requestBody": {
        "content": {"multipart/form-data": PATCH_FILES},
        "required": True,
    }
}
SEARCH_BODY = {
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
BROWSE_BODY = {
    "requestBody": {
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BrowseRequest"}}},
        "required": True,
    }
}


#: /readyz answers 503 with a `Ready` body when not ready, or the error model while starting or unavailable
READYZ_RESPONSES: dict[int | str, dict[str, Any]] = {
    **errors(auth=False),
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
        "headers": errors(auth=False)[503]["headers"],
    },
}
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"},
    **errors(auth=False),
}
