"""`bigearth serve`: the classification + retrieval service on a local (or attached) Ray, with Ray Serve."""

from __future__ import annotations

import argparse
import os


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the classification + retrieval service locally (Ray Serve)")
    p.add_argument("--checkpoint", required=True, help="checkpoint or run folder")
    p.add_argument("--index", required=True, help="embedded-engine folder or http(s):// Qdrant URL")
    p.add_argument("--data", required=True, help="the shard set")
    p.add_argument("--collection", default="bigearthnet")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1, help="classifier replicas")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--replica-cpus", type=float, default=1.0)
    p.add_argument("--api-keys", nargs="*", help="require one of these in X-API-Key (also $BIGEARTH_API_KEYS)")
    p.add_argument("--api-keys-file", help="file of accepted keys, one per line (a mounted secret)")
    p.add_argument("--no-block", action="store_true", help="return once deployed (the service stays up in Ray)")
    p.set_defaults(func=run)


def _private_keys_file(keys: list[str]) -> str:
    """The keys in a file only this user can read: the replicas read it at start (keys are never Serve arguments)."""
    import tempfile

    fd, path = tempfile.mkstemp(prefix="bigearth-api-keys-", suffix=".txt")  # mode 0600
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(keys) + "\n")
    return path


def run(a: argparse.Namespace) -> int:
    keys_file = a.api_keys_file or (_private_keys_file(a.api_keys) if a.api_keys else None)
    left_running = False
    try:
        code = _serve(a, keys_file)
        left_running = a.no_block  # the replicas read the keys file whenever one (re)starts: keep it
        return code
    finally:
        if keys_file and not a.api_keys_file and not left_running:
            os.unlink(keys_file)  # a failed start, Ctrl-C or a lost cluster: no key left behind in /tmp


def _serve(a: argparse.Namespace, keys_file: str | None) -> int:
    import time

    from ray import serve

    from bigearth import raycluster
    from bigearth.raycluster import ensure_ray
    from bigearth.serving.app import AppArgs, build

    args = AppArgs(
        checkpoint=a.checkpoint,
        index=a.index,
        data=a.data,
        collection=a.collection,
        classifier_replicas=a.replicas,
        max_batch_size=a.max_batch_size,
        replica_cpus=a.replica_cpus,
        api_keys_file=keys_file,
    )
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
