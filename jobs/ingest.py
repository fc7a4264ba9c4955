"""`ray job submit -- python jobs/ingest.py ...`: the same command and options as `bigearth ingest`
(`python jobs/ingest.py --help`); a shim, so the KubeRay manifests may call either."""

import sys

from bigearth import cli


def main(argv: list[str] | None = None) -> int:
    return cli.job("ingest", argv)


if __name__ == "__main__":
    sys.exit(main())
