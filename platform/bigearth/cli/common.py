"""What several commands share: object-storage options, patch lists."""

from __future__ import annotations

import argparse

from bigearth.storage import StorageOptions


def add_storage_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("object storage (defaults from the environment: AWS_*, BIGEARTH_S3_ENDPOINT)")
    g.add_argument("--s3-endpoint", help="S3 endpoint URL (MinIO, SeaweedFS, Ceph, ...)")
    g.add_argument("--s3-anon", action="store_true", help="anonymous access (public buckets)")
    g.add_argument("--s3-key", help="access key id")
    g.add_argument("--s3-secret", help="secret access key")
    g.add_argument("--s3-region", help="region name")


def storage_from_args(a: argparse.Namespace) -> StorageOptions:
    return StorageOptions.from_env(
        endpoint_url=a.s3_endpoint, anon=a.s3_anon or None, key=a.s3_key, secret=a.s3_secret, region=a.s3_region
    )


def patch_list(value: str | None) -> list[str] | None:
    """`--patches`: a comma list of S2 patch ids, or a file with one id per line."""
    if not value:
        return None
    if "," in value or value.startswith(("S2A_", "S2B_")):
        return [v.strip() for v in value.split(",") if v.strip()]
    with open(value) as f:
        return [line.strip() for line in f if line.strip()]
