"""What several commands share: object-storage options, secret options, patch lists, the executor."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from bigearth.core.secrets import read_secret
from bigearth.core.storage import StorageOptions

if TYPE_CHECKING:
    from bigearth.execution.executors import Executor


def add_secret_argument(g: Any, flag: str, env: str | None, help: str) -> None:
    """A secret option as `flag` (still accepted, with a warning: the command line is visible in `ps`) and
    `flag-file` (a file holding it); `env` names the variable read when neither is given."""
    where = f"; default ${env}" if env else ""
    g.add_argument(flag, help=f"{help} (visible in ps: prefer {flag}-file{' or $' + env if env else ''})")
    g.add_argument(f"{flag}-file", metavar="FILE", help=f"file holding the {help}{where}")


def secret_from_args(a: argparse.Namespace, flag: str, env: str | None) -> str | None:
    """The value of a secret option added with `add_secret_argument` (an unreadable file is a ValueError naming
    the option and the file)."""
    dest = flag.lstrip("-").replace("-", "_")
    return read_secret(getattr(a, dest), getattr(a, f"{dest}_file"), env, flag)


def add_storage_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("object storage (defaults from the environment: AWS_*, BIGEARTH_S3_ENDPOINT)")
    g.add_argument("--s3-endpoint", help="S3 endpoint URL (MinIO, SeaweedFS, Ceph, ...)")
    g.add_argument("--s3-anon", action="store_true", help="anonymous access (public buckets)")
    g.add_argument("--s3-key", help="access key id")
    add_secret_argument(g, "--s3-secret", "AWS_SECRET_ACCESS_KEY", "secret access key")
    g.add_argument("--s3-region", help="region name")


def storage_from_args(a: argparse.Namespace) -> StorageOptions:
    # the environment's AWS_SECRET_ACCESS_KEY is StorageOptions.from_env's to read (with its key and token)
    secret = secret_from_args(a, "--s3-secret", None)
    return StorageOptions.from_env(
        endpoint_url=a.s3_endpoint, anon=a.s3_anon or None, key=a.s3_key, secret=secret, region=a.s3_region
    )


def patch_list(value: str | None) -> list[str] | None:
    """`--patches`: a comma list of S2 patch ids, or a file with one id per line."""
    if not value:
        return None
    if "," in value or value.startswith(("S2A_", "S2B_")):
        return [v.strip() for v in value.split(",") if v.strip()]
    with open(value) as f:
        return [line.strip() for line in f if line.strip()]


def add_executor_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--executor",
        choices=["ray", "local"],
        default="ray",
        help="where the work runs: ray (default: the cluster of RAY_ADDRESS or the last `ray start`, else a local "
        "Ray) or local (in this process, one unit after another, no Ray: small jobs, a laptop)",
    )


def executor_from_args(a: argparse.Namespace) -> Executor:
    """The executor `--executor` names. A Ray executor attaches (`ensure_ray`: the cluster, its watchdog) when the
    first unit runs, so a command that stops on its input (a held lock, a missing archive) starts no Ray."""
    from bigearth.execution.executors import executor_for

    return executor_for(a.executor)
