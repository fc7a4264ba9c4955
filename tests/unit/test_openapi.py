"""The OpenAPI document is the contract (docs/api.md): users generate clients from `/openapi.json`. It is a valid
OpenAPI 3.1 document whose every `$ref` resolves; every operation lists every status and content type it can answer
(the error model, `ErrorBody`); every number a request carries is bounded; a patch id has the pattern the service
checks. Built by the plain application (`bigearth.serving.http`), no Ray; the schema-driven fuzz run against the
running service is tests/integration/test_openapi.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bigearth.serving.guard import OPEN_PATHS
from helpers import openapi_operations, openapi_refs


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The document as the service builds it (the plain application, no service attached)."""
    from bigearth.serving.http import document

    return document()


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref}: not a reference into this document"
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve (no {part!r})"
        node = node[part]
    return node


def test_the_document_is_valid_openapi_and_every_ref_resolves(document: dict[str, Any]) -> None:
    from openapi_spec_validator import validate

    validate(document)  # the OpenAPI 3.1 meta-schema; it does not follow refs inside schemas: checked below
    refs = set(openapi_refs(document))
    assert refs and not [r for r in refs if r.startswith("#/$defs")], sorted(refs)
    for ref in refs:
        _resolve(document, ref)
    assert {
        "SearchRequest",
        "SearchFilter",
        "Near",
        "ClassifyByIdRequest",
        "SegmentByIdRequest",
        "BrowseRequest",
    } <= set(document["components"]["schemas"])


def _error_schema(response: dict[str, Any]) -> Any:
    return response.get("content", {}).get("application/json", {}).get("schema")


def test_every_operation_lists_the_statuses_and_content_types_it_answers(document: dict[str, Any]) -> None:
    error_model = {"$ref": "#/components/schemas/ErrorBody"}
    assert "HTTPValidationError" not in document["components"]["schemas"]  # FastAPI's 422 body is not the service's
    for path, method, op in openapi_operations(document):
        where = f"{method} {path}"
        responses = op["responses"]
        statuses = {int(s) for s in responses}
        assert {405, 408, 413, 500, 503} <= statuses, where  # any route: another method, proxy timeout,
        # Content-Length, failure, restart
        assert "Retry-After" in responses["503"].get("headers", {}), where
        for status, response in responses.items():
            if int(status) >= 400:
                schema = _error_schema(response)
                assert schema == error_model or error_model in schema.get("anyOf", []), (where, status)
        if path in OPEN_PATHS:
            assert 401 not in statuses and "security" not in op, where
        else:
            assert 401 in statuses and op["security"] == [{"ApiKey": []}, {"Bearer": []}], where
        if op.get("parameters") or "requestBody" in op:
            assert 422 in statuses, where
        body = op.get("requestBody", {}).get("content", {})
        if body:
            assert {400, 408, 413} <= statuses, where
        if "multipart/form-data" in body:
            assert 415 in statuses, where  # multipart or JSON only: anything else is refused
        if "{patch_id}" in path or ("application/json" in body and "patch_id" in str(body)):
            assert 404 in statuses, where
    content = {
        (p, m): {s: set(r.get("content", {})) for s, r in op["responses"].items()}
        for p, m, op in openapi_operations(document)
    }
    assert content[("/v1/patches/{patch_id}/rgb.png", "GET")]["200"] == {"image/png"}
    assert content[("/v1/quicklook", "POST")]["200"] == {"image/png"}
    assert content[("/v1/patches/{patch_id}/reference.png", "GET")]["200"] == {"image/png"}
    assert content[("/v1/segment", "POST")]["200"] == {"application/json", "image/png"}  # JSON, or the PNG asked for
    segment = document["paths"]["/v1/segment"]["post"]
    assert set(segment["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert segment["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SegmentByIdRequest"
    }
    assert segment["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SegmentResponse"
    }
    assert content[("/metrics", "GET")]["200"] == {"text/plain"}
    assert set(document["paths"]["/v1/browse"]["post"]["requestBody"]["content"]) == {"application/json"}
    assert set(document["paths"]["/v1/search"]["post"]["requestBody"]["content"]) == {
        "application/json",
        "multipart/form-data",
    }


def _request_schemas(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema a request is checked against: parameters and bodies, refs followed (each component once)."""
    seen: set[str] = set()
    stack: list[tuple[str, Any]] = []
    for path, method, op in openapi_operations(doc):
        for p in op.get("parameters", []):
            stack.append((f"{method} {path} {p['name']}", p["schema"]))
        for media, body in op.get("requestBody", {}).get("content", {}).items():
            stack.append((f"{method} {path} {media}", body["schema"]))
    while stack:
        where, node = stack.pop()
        if isinstance(node, list):
            stack.extend((where, n) for n in node)
            continue
        if not isinstance(node, dict):
            continue
        if "$ref" in node:
            if node["$ref"] not in seen:
                seen.add(node["$ref"])
                stack.append((node["$ref"], _resolve(doc, node["$ref"])))
            continue
        yield where, node
        for key, value in node.items():
            if key in ("properties", "$defs"):
                stack.extend((f"{where}.{name}", v) for name, v in value.items())
            elif isinstance(value, dict | list) and key not in ("examples", "default", "enum", "const"):
                stack.append((where, value))


def test_every_number_a_request_carries_is_bounded(document: dict[str, Any]) -> None:
    numbers = [(w, s) for w, s in _request_schemas(document) if s.get("type") in ("integer", "number")]
    assert len(numbers) >= 8  # offset, limit, scale (2), threshold (2), k, vector values, browse limit, near
    unbounded = [
        w
        for w, s in numbers
        if not ({"minimum", "exclusiveMinimum"} & s.keys() and {"maximum", "exclusiveMaximum"} & s.keys())
    ]
    assert not unbounded, unbounded


def test_every_list_and_string_a_request_carries_is_bounded(document: dict[str, Any]) -> None:
    """Arrays have maxItems; strings a maxLength, a pattern, an enum or a format that bounds them (a date, a file
    part, bounded by the body limit); the filter lists as the service checks them (one value or up to 64)."""
    from bigearth.retrieval.schema import MAX_FILTER_VALUE_CHARS, MAX_FILTER_VALUES

    schemas = list(_request_schemas(document))
    arrays = [w for w, s in schemas if s.get("type") == "array" and "maxItems" not in s]
    assert not arrays, arrays
    strings = [
        w
        for w, s in schemas
        if s.get("type") == "string" and not ({"maxLength", "pattern", "enum", "const", "format"} & s.keys())
    ]
    assert not strings, strings
    filters = document["components"]["schemas"]["SearchFilter"]["properties"]
    for name in ("labels_any", "labels_all", "country", "tile", "split", "season"):
        many, one, null = filters[name]["anyOf"]
        assert many["maxItems"] == MAX_FILTER_VALUES and many["items"] == one and null == {"type": "null"}, name
    assert filters["country"]["anyOf"][1] == {"type": "string", "maxLength": MAX_FILTER_VALUE_CHARS}


def test_every_patch_id_carries_the_services_pattern(document: dict[str, Any]) -> None:
    from bigearth.archive.names import S2_ID_PATTERN

    named = [s for w, s in _request_schemas(document) if w.rsplit(".", 1)[-1].endswith("patch_id")]
    ids = [a for s in named for a in s.get("anyOf", [s]) if a.get("type") != "null"]
    assert len(ids) >= 4, named  # two path parameters, ClassifyByIdRequest, SearchRequest
    assert all(s.get("pattern") == S2_ID_PATTERN for s in ids), ids


def test_the_document_the_app_serves_is_the_one_it_builds(document: dict[str, Any]) -> None:
    """/openapi.json of an application is `document()` (open: no key; the interfaces are not asked)."""
    import asyncio

    import httpx

    from bigearth.serving.args import AppArgs
    from bigearth.serving.http import create_app
    from bigearth.serving.local import LocalMetrics

    args = AppArgs(checkpoint="c", index="/data/index", data="d")
    app = create_app(None, None, LocalMetrics(), args)  # type: ignore[arg-type]

    async def served() -> dict[str, Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://unit") as client:
            got: dict[str, Any] = (await client.get("/openapi.json")).json()
            return got

    assert asyncio.run(served()) == document
