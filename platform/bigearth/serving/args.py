"""The Serve application's typed arguments (`serve/config.yaml` `args:`, `serve run ... key=value`)."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator


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
    def _one_reader_per_folder(self) -> AppArgs:
        if self.retriever_replicas > 1 and not self.index.startswith(("http://", "https://")):
            raise ValueError(
                f"retriever_replicas={self.retriever_replicas}: the embedded engine at {self.index!r} is opened by one "
                "process; use 1, or a Qdrant server (http(s):// URL) for several replicas"
            )
        return self

    def keys(self) -> set[str]:
        env = os.environ.get("BIGEARTH_API_KEYS", "")
        return {k.strip() for k in [*self.api_keys, *env.split(",")] if k.strip()}
