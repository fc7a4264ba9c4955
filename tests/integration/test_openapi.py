"""The OpenAPI document against the running Serve application: the findings of earlier fuzz runs answer as the
document says, and a schema-driven fuzz run (Schemathesis, bounded and derandomised) finds no 5xx and no answer the
document does not describe. The document's own properties are tests/unit/test_openapi.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import deploy_app, openapi_operations, openapi_refs, random_checkpoint

KEY = "openapi-key"
#: a well-formed v2 id that the synthetic archive does not hold (none of its tile products is this one)
UNKNOWN_ID = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_99_99"


# ------------------------------------------------------------------------------------------------ the service
@pytest.fixture(scope="module")
def url(tiny_run: Path, index_v2: Path, shards_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from ray import serve

    from bigearth.serving.app import AppArgs, build

    keys = tmp_path_factory.mktemp("openapi-secrets") / "api-keys"
    keys.write_text(f"{KEY}\n")
    seg = random_checkpoint(tmp_path_factory.mktemp("openapi-seg") / "seg", "seg-tiny", model_kwargs={"fusion": "late"})
    args = AppArgs(
        checkpoint=str(tiny_run),
        segmentation_checkpoint=str(seg),  # /v1/segment fuzzed with a model behind it
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
    assert not [ref for ref in openapi_refs(served) if not ref.startswith("#/components/")]


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
    assert len(ran) == len(list(openapi_operations(schema.raw_schema))), ran
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
