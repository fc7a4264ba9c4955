"""`bigearth serve`: the classification + retrieval service on a local (or attached) Ray, with Ray Serve."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, get_args

from pydantic import BaseModel

from bigearth.core.secrets import argv_warning
from bigearth.serving.args import SECRET_FIELDS, AppArgs

log = logging.getLogger("bigearth.serve")

# Flags kept from before the application's fields were all exposed (the field's own flag works too).
ALIASES = {"classifier_replicas": ["--replicas"]}


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the classification + retrieval service locally (Ray Serve)",
        description="Every application argument (AppArgs: serve/config.yaml `args:`) has its flag; "
        "docs/configuration.md describes them.",
    )
    g = p.add_argument_group("the service on this machine")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--api-keys", nargs="*", help="require one of these in X-API-Key (also $BIGEARTH_API_KEYS)")
    g.add_argument("--no-block", action="store_true", help="return once deployed (the service stays up in Ray)")
    add_model_arguments(p.add_argument_group("the application (AppArgs)"), AppArgs, ALIASES)
    p.set_defaults(func=run)


def add_model_arguments(
    g: argparse._ArgumentGroup, model: type[BaseModel], aliases: dict[str, list[str]] | None = None
) -> None:
    """One flag per field of `model` (`--field-name`), typed from its annotation; an unset flag keeps the field's
    default, so the model validates every value and names the field it refuses."""
    for name, field in model.model_fields.items():
        if name in SECRET_FIELDS:
            continue  # refused as arguments (they would be stored in the Serve config): never a flag
        kind = next((t for t in (get_args(field.annotation) or (field.annotation,)) if t is not type(None)), str)
        flags = ["--" + name.replace("_", "-"), *(aliases or {}).get(name, [])]
        text = (field.description or "").replace("%", "%%")  # argparse formats help with %
        if field.is_required():
            g.add_argument(*flags, dest=name, type=kind, required=True, help=text)
        elif kind is bool:
            g.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            shown = f"default: {field.default}"
            g.add_argument(*flags, dest=name, type=kind, default=None, help=f"{text} ({shown})" if text else shown)


def model_values(a: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The fields given on the command line."""
    return {k: getattr(a, k) for k in model.model_fields if getattr(a, k, None) is not None}


def _private_keys_file(keys: list[str]) -> str:
    """The keys in a file only this user can read: the replicas read it at start (keys are never Serve arguments)."""
    import tempfile

    fd, path = tempfile.mkstemp(prefix="bigearth-api-keys-", suffix=".txt")  # mode 0600
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(keys) + "\n")
    return path


def run(a: argparse.Namespace) -> int:
    if a.api_keys:
        print(argv_warning("--api-keys", "--api-keys-file or $BIGEARTH_API_KEYS"), file=sys.stderr)
    keys_file = a.api_keys_file or (_private_keys_file(a.api_keys) if a.api_keys else None)
    left_running = False
    try:
        code = _serve(a, keys_file)
        left_running = a.no_block  # the replicas read the keys file whenever one (re)starts: keep it
        return code
    finally:
        if keys_file and not a.api_keys_file and not left_running:
            os.unlink(keys_file)  # a failed start, Ctrl-C or a lost cluster: no key left behind in /tmp


def open_api_notice(args: AppArgs) -> str | None:
    """What `bigearth serve` says at start when it finds no API keys (None when it has some); `require_auth`
    without keys is refused here already (`NoApiKeysError`), before anything starts."""
    if args.keys():
        return None
    return (
        "WARNING: no API keys (--api-keys, --api-keys-file or $BIGEARTH_API_KEYS): the API is open to anyone who "
        "can reach it; --require-auth refuses to start without keys"
    )


def _serve(a: argparse.Namespace, keys_file: str | None) -> int:
    import time

    from ray import serve

    from bigearth.execution import raycluster
    from bigearth.execution.raycluster import ensure_ray
    from bigearth.serving.app import build

    args = AppArgs(**{**model_values(a, AppArgs), "api_keys_file": keys_file})
    notice = open_api_notice(args)  # the replicas read the same keys file and environment (a local Ray)
    if notice:
        log.warning(notice)
        print(notice, flush=True)
    ensure_ray()
    serve.start(http_options={"host": a.host, "port": a.port, "request_timeout_s": 120})
    serve.run(build(args), name="bigearth", route_prefix="/")
    print(f"serving on http://{a.host}:{a.port} (OpenAPI: /docs); Ctrl-C stops", flush=True)
    if a.no_block:
        return 0
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        if raycluster.LOST:
            raise  # nothing to shut down: main() reports the lost cluster
        serve.shutdown()
    return 0
