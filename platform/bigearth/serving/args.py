"""The Serve application's typed arguments (`serve/config.yaml` `args:`, `serve run ... key=value`).

Secrets are never arguments: the arguments end up in the Serve deployment config (the dashboard, `serve status`,
the controller's checkpoint). Each replica reads its keys when it starts, from its environment (a Kubernetes Secret
through `env`) or from a file (a mounted Secret).
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

SECRET_FIELDS = {
    "api_keys": "set BIGEARTH_API_KEYS in the replicas' environment, or api_keys_file",
    "qdrant_api_key": "set QDRANT_API_KEY in the replicas' environment, or qdrant_api_key_file",
}


def _read_secret_file(path: str, field: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise RuntimeError(f"{field}: cannot read {path!r} on this node ({e.strerror or e})") from e


def read_api_keys(path: str | None) -> set[str]:
    """Accepted API keys, read now: `$BIGEARTH_API_KEYS` (comma-separated) and the lines of the file `path` (lines
    starting with `#` are comments)."""
    found = os.environ.get("BIGEARTH_API_KEYS", "").split(",")
    if path:
        lines = _read_secret_file(path, "api_keys_file").splitlines()
        found += [x for x in lines if not x.lstrip().startswith("#")]
    return {k.strip() for k in found if k.strip()}


#: Where a deployment that sets `require_auth` expects its keys (infra/kuberay mounts the Secret as an env var).
KEYS_EXPECTED = (
    "the Kubernetes Secret 'bigearth-api-keys' (key 'keys', comma-separated) exposed to the replicas as "
    "$BIGEARTH_API_KEYS, or a file of keys named by api_keys_file"
)


class NoApiKeysError(RuntimeError):
    """`require_auth` is set and this replica found no API keys: it refuses to start rather than serve an open API."""


def check_auth(keys: set[str], require_auth: bool, keys_file: str | None) -> set[str]:
    """The keys a replica starts with, or `NoApiKeysError` when auth is required and none were found (an empty
    set means an open API: only allowed when `require_auth` is false)."""
    if not keys and require_auth:
        where = f"api_keys_file {keys_file!r} holds no key and " if keys_file else ""
        raise NoApiKeysError(
            f"require_auth is set but this replica found no API keys ({where}$BIGEARTH_API_KEYS is empty or unset); "
            f"expected {KEYS_EXPECTED}. Refusing to start an API open to anyone who can reach it."
        )
    return keys


def read_qdrant_key(path: str | None) -> str | None:
    """The Qdrant API key, read now: the file `path`, else `$QDRANT_API_KEY`."""
    if path:
        return _read_secret_file(path, "qdrant_api_key_file").strip() or None
    return os.environ.get("QDRANT_API_KEY") or None


class AppArgs(BaseModel):
    """Arguments of the application builder (`serve run ... key=value`, or `args:` in serve/config.yaml)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(description="checkpoint folder or run folder (its best checkpoint); path or URL")
    index: str = Field(description="embedded-engine folder, or http(s):// Qdrant URL")
    data: str = Field(description="the shard set (patch lookups, quicklooks, classify by patch id)")
    segmentation_checkpoint: str | None = Field(
        None, description="a segmentation model's checkpoint or run folder, served by POST /v1/segment (none: no maps)"
    )
    segmenter_replicas: int = Field(1, ge=1, description="segmentation model replicas (with segmentation_checkpoint)")
    collection: str = "bigearthnet"
    qdrant_api_key_file: str | None = Field(
        None, description="file holding the Qdrant API key, read by each replica (else $QDRANT_API_KEY)"
    )
    classifier_replicas: int = Field(1, ge=1)
    classifier_max_replicas: int | None = Field(None, description="> classifier_replicas: autoscale up to this")
    max_batch_size: int = Field(32, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=1)
    gpus_per_classifier: float = Field(0, ge=0, description="GPUs per classifier replica: 1 on a GPU cluster")
    gpus_per_segmenter: float = Field(
        0,
        ge=0,
        description="GPUs per segmenter replica (with segmentation_checkpoint): the two models need a GPU each, or "
        "fractional shares (0.5 and 0.5 on a one-GPU node)",
    )
    replica_cpus: float = Field(1.0, ge=0, description="CPUs reserved per classifier (and segmenter) replica")
    ingress_replicas: int = Field(1, ge=1, description="HTTP ingress replicas (/metrics covers all of them)")
    ingress_on_head: bool = Field(
        True, description="Ingress and Metrics replicas on the head node: a lost worker node never takes them along"
    )
    retriever_replicas: int = Field(1, ge=1, description="keep 1 for the embedded engine (one process per folder)")
    max_ongoing_requests: int = Field(128, ge=1, description="per replica; must exceed max_batch_size to batch")
    api_keys_file: str | None = Field(
        None, description="file of accepted X-API-Key values, one per line, read by each replica (+ $BIGEARTH_API_KEYS)"
    )
    max_body_mb: float = Field(16.0, gt=0, description="larger bodies are refused (413) as they stream in")
    body_timeout_s: float = Field(30.0, gt=0, description="a body that sends nothing for this long is refused (408)")
    threshold: float = Field(0.5, gt=0, lt=1)
    require_auth: bool = Field(
        False,
        description="refuse to start without API keys ($BIGEARTH_API_KEYS or api_keys_file); true in the "
        "Kubernetes deployment, false for local use",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for name, instead in SECRET_FIELDS.items():
                if v.get(name):  # an empty list / null is harmless
                    stored = "they would be stored in the Serve config"
                    raise ValueError(f"{name}: keys are not arguments ({stored}); {instead}")
        return v

    @model_validator(mode="after")
    def _one_reader_per_folder(self) -> AppArgs:
        if self.retriever_replicas > 1 and not self.index.startswith(("http://", "https://")):
            raise ValueError(
                f"retriever_replicas={self.retriever_replicas}: the embedded engine at {self.index!r} is opened by one "
                "process; use 1, or a Qdrant server (http(s):// URL) for several replicas"
            )
        return self

    def keys(self) -> set[str]:
        """The accepted API keys, read now (at replica start). Empty: no auth, which `require_auth` refuses
        (`NoApiKeysError`, naming where keys are expected)."""
        return check_auth(read_api_keys(self.api_keys_file), self.require_auth, self.api_keys_file)
