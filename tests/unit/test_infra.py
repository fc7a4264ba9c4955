"""The KubeRay deployment's files checked without rendering them (tests/integration/test_infra.py renders every
overlay with kubectl): the schema strictness of the offline validator, the Qdrant server's version, the secrets
example."""

from __future__ import annotations

import re

import yaml

from helpers import INFRA, K8S_VERSION
from k8s_schema import apply_defaults, strict_schema


def test_int_or_string_and_defaults_are_handled_like_the_api_server() -> None:
    import jsonschema

    schema = strict_schema(
        {
            "type": "object",
            "required": ["port", "mode"],
            "properties": {
                "port": {"x-kubernetes-int-or-string": True},
                "mode": {"type": "string", "default": "token"},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        }
    )
    v = jsonschema.Draft7Validator(schema)
    for port in (8000, "http"):
        assert not list(v.iter_errors(apply_defaults({"port": port}, schema)))  # `mode` required, defaulted
    assert list(v.iter_errors({"port": 8000}))  # without defaulting, `mode` is missing
    assert list(v.iter_errors(apply_defaults({"port": 1.5}, schema)))
    assert not list(v.iter_errors(apply_defaults({"port": 1, "free": {"anything": 1}}, schema)))
    assert list(v.iter_errors(apply_defaults({"port": 1, "typo": 1}, schema)))


def test_the_qdrant_server_matches_the_client_minor() -> None:
    from importlib.metadata import version

    text = (INFRA / "base" / "qdrant.yaml").read_text()
    tag = re.search(r"image: qdrant/qdrant:v(\d+)\.(\d+)", text)
    assert tag, "no qdrant/qdrant:vX.Y image in infra/kuberay/base/qdrant.yaml"
    client = version("qdrant-client").split(".")[:2]
    assert list(tag.groups()) == client, f"server v{'.'.join(tag.groups())} vs qdrant-client {'.'.join(client)}"


def test_the_secrets_example_validates() -> None:
    import kubernetes_validate

    for d in yaml.safe_load_all((INFRA / "secrets.example.yaml").read_text()):
        if d:
            kubernetes_validate.validate(
                {**d, "metadata": {**d["metadata"], "namespace": "bigearth"}}, K8S_VERSION, strict=True
            )
