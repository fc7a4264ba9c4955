"""The OpenAPI document is the contract (docs/api.md): users generate clients from `/openapi.json`. It is a valid
OpenAPI 3.1 document whose every `$ref` resolves; every operation lists every status and content type it can answer
(the error model, `ErrorBody`); every number a request carries is bounded; a patch id has the pattern the service
checks. Then a schema-driven fuzz run (Schemathesis, bounded and derandomised) against the running service finds no
5xx and no answer the document does not describe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bigearth.serving.ingress import OPEN_PATHS
from helpers import deploy_app

KEY = "openapi-key"
#: a well-formed v2 id that the synthetic archive does not hold (none of its tile products is this one)
UNKNOWN_ID = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_99_99"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The document as the service builds it, without starting Ray (the ingress class is only declared)."""
    from ray import serve

    from bigearth.serving.ingress import make_fastapi_app, make_ingress

    app = make_fastapi_app()
    make_ingress(serve, app)
    doc: dict[str, Any] = app.openapi()
    return doc


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            yield path, method.upper(), operation


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


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
    refs = set(_refs(document))
    assert refs and not [r for r in refs if r.startswith("#/$defs")], sorted(refs)
    for ref in refs:
        _resolve(document, ref)
    assert {"SearchRequest", "SearchFilter", "Near", "ClassifyByIdRequest", "BrowseRequest"} <= set(
        document["components"]["schemas"]
    )


def _error_schema(response: dict[str, Any]) -> Any:
    return response.get("content", {}).get("application/json", {}).get("schema")


def test_every_operation_lists_the_statuses_and_content_types_it_answers(document: dict[str, Any]) -> None:
    error_model = {"$ref": "#/components/schemas/ErrorBody"}
    assert "HTTPValidationError" not in document["components"]["schemas"]  # FastAPI's 422 body is not the service's
    for path, method, op in _operations(document):
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
        (p, m): {s: set(r.get("content", {})) for s, r in op["responses"].items()} for p, m, op in _operations(document)
    }
    assert content[("/v1/patches/{patch_id}/rgb.png", "GET")]["200"] == {"image/png"}
    assert content[("/v1/quicklook", "POST")]["200"] == {"image/png"}
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
    for path, method, op in _operations(doc):
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


# ------------------------------------------------------------------------------------------------ the service
@pytest.fixture(scope="module")
def url(tiny_run: Path, index_v2: Path, shards_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from ray import serve

    from bigearth.serving.app import AppArgs, build

    keys = tmp_path_factory.mktemp("openapi-secrets") / "api-keys"
    keys.write_text(f"{KEY}\n")
    args = AppArgs(
        checkpoint=str(tiny_run),
        index=str(index_v2),
        data=str(shards_v2),
        replica_cpus=0.25,
        api_keys_file=str(keys),
        max_body_mb=1,
        body_timeout_s=3,
    )
    yield deploy_app(build(args), "bigearth")
    serve.shutdown()


@pytest.mark.usefixtures("ray_local")
def test_the_findings_answer_as_the_document_says(url: str, shards_v2: Path) -> None:
    from bigearth.input.raydata import read_columns

    h = {"X-API-Key": KEY}
    r = httpx.get(f"{url}/v1/patches", params={"offset": 2497415803784417771520}, headers=h)
    assert r.status_code == 422 and r.json()["field"] == "offset", r.text  # was a 500
    r = httpx.get(f"{url}/v1/patches", params={"offset": 10**9, "limit": 5}, headers=h)
    assert r.status_code == 200 and r.json()["patch_ids"] == [], r.text  # the bound itself: an empty page
    pid = read_columns(str(shards_v2), ["patch_id"]).column(0)[0].as_py()
    assert httpx.get(f"{url}/v1/patches/{pid}", headers=h).status_code == 200
    r = httpx.get(f"{url}/v1/patches/{UNKNOWN_ID}", headers=h)
    assert r.status_code == 404 and r.json()["field"] == "patch_id", r.text  # well-formed: looked up
    for bad in ("S2A_x", "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48", UNKNOWN_ID.lower()):
        r = httpx.get(f"{url}/v1/patches/{bad}/rgb.png", headers=h)
        assert r.status_code == 422 and r.json()["field"] == "patch_id", r.text
        assert "not a valid patch id: expected" in r.json()["message"] and "(v2)" in r.json()["message"]
    r = httpx.delete(f"{url}/v1/search", headers=h)  # Starlette's own answers are the error model too
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed" and "POST" in r.headers["allow"]
    r = httpx.get(f"{url}/v1/nothing-here", headers=h)
    assert r.status_code == 404 and set(r.json()) == {"error", "message", "field"}, r.text
    served = httpx.get(f"{url}/openapi.json").json()
    assert not [ref for ref in _refs(served) if not ref.startswith("#/components/")]


@pytest.mark.usefixtures("ray_local")
def test_a_schema_driven_fuzz_run_finds_no_5xx_and_no_undocumented_answer(url: str) -> None:
    """Schemathesis over the document the service serves: for each operation, requests that follow the schema and
    requests that break it (derandomised, a few dozen per operation); each answer is checked against the document:
    no 5xx, a documented status, a documented content type, a body and headers that match their schemas."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        response_headers_conformance,
    ]
    schema = schemathesis.openapi.from_dict(httpx.get(f"{url}/openapi.json").json())
    failures: dict[str, str] = {}
    ran: dict[str, dict[int, int]] = {}  # operation -> status -> answers
    bounded = settings(
        max_examples=50,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
        suppress_health_check=list(HealthCheck),
    )

    # an archived pair, so that answers with content (metadata, PNGs, hits, probabilities) are checked too
    pid = httpx.get(f"{url}/v1/patches", params={"limit": 1}, headers={"X-API-Key": KEY}).json()["patch_ids"][0]

    def fuzz(operation: Any) -> None:
        strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)
        if "{patch_id}" in operation.path:
            strategy |= operation.as_strategy(path_parameters={"patch_id": pid})
        if operation.path in ("/v1/classify", "/v1/search"):
            strategy |= operation.as_strategy(body={"patch_id": pid}, media_type="application/json")

        @bounded
        @given(case=strategy)
        def run(case: Any) -> None:
            response = case.call(base_url=url, headers={"X-API-Key": KEY}, timeout=60)
            tally = ran.setdefault(operation.label, {})
            tally[response.status_code] = tally.get(response.status_code, 0) + 1
            case.validate_response(response, checks=checks)

        run()

    for result in schema.get_all_operations():
        operation = result.ok()
        try:
            fuzz(operation)
        except (Exception, BaseExceptionGroup) as e:  # every operation runs; all failures are reported together
            failures[operation.label] = f"{type(e).__name__}: {e}"[:3000]
    print(ran)
    assert len(ran) == len(list(_operations(schema.raw_schema))), ran
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
