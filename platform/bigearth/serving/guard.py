"""What every request passes before a route sees it: the API key (compared as digests), the Content-Length limit;
and what a client sees of an unexpected error (an id, never the exception)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from typing import Any

from bigearth.api.schemas import ApiError

log = logging.getLogger("bigearth.serve")

#: Paths answered without an API key: exactly these (a prefix match would also open `/metricsX`, `/docs-private`).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})


def internal_error(exc: BaseException, where: str) -> tuple[dict[str, Any], str]:
    """The body of a 500 and its error id: the exception (type, message, traceback) goes to the service log under
    that id, never into the answer, which may reach anyone."""

    error_id = uuid.uuid4().hex[:12]
    log.error("unhandled error %s on %s", error_id, where, exc_info=(type(exc), exc, exc.__traceback__))
    body = {"error": "internal", "message": f"internal error {error_id}: reported in the service log", "field": None}
    return body, error_id


def auth_status(keys: set[str]) -> str:
    """The line each ingress replica logs once at start: whether the API asks for a key."""
    if keys:
        return f"auth on: {len(keys)} API key(s) accepted (header X-API-Key); open paths: {sorted(OPEN_PATHS)}"
    return (
        "auth OFF: no API keys ($BIGEARTH_API_KEYS, api_keys_file), the API is open to anyone who can reach it; "
        "set require_auth=true to refuse to start without keys"
    )


def key_digests(keys: set[str]) -> list[bytes]:
    """The SHA-256 of each API key, computed once at start: requests are compared digest to digest, so neither the
    time a comparison takes nor which comparison ends it depends on a key's length or on which key matched."""
    return [hashlib.sha256(k.encode()).digest() for k in sorted(keys)]


def authenticated(headers: Any, digests: list[bytes]) -> bool:
    """`headers` (a case-insensitive mapping) carry one of the keys: `X-API-Key: KEY` or `Authorization: Bearer KEY`
    (an Authorization header without the Bearer scheme is no key). False while auth is off (no digests)."""
    given = headers.get("x-api-key") or None
    if given is None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" and token.strip() else None
    if given is None:
        return False
    digest = hashlib.sha256(given.encode()).digest()
    matches = [hmac.compare_digest(digest, d) for d in digests]  # every key compared, whichever matches
    return any(matches)


def content_length_error(length: str | None, limit: int) -> ApiError | None:
    """The 413 for a Content-Length header that is not a number or is over `limit` bytes (never echoing the
    header), or None."""
    if length is None:
        return None
    if not (length.isascii() and length.isdigit()):
        return ApiError(413, f"invalid Content-Length (the limit is {limit} bytes)", "body")
    if len(length) > 18:  # not parsed: over any limit
        return ApiError(413, f"request body is over the limit of {limit} bytes", "body")
    if int(length) > limit:
        return ApiError(413, f"request body of {int(length)} bytes is over the limit of {limit} bytes", "body")
    return None
