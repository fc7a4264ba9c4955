"""`ray job submit -- python jobs/index.py ...`: the same command and options as `bigearth index`
(`python jobs/index.py --help`); a shim, so the KubeRay manifests may call either."""

import sys

from bigearth import cli


def main(argv: list[str] | None = None) -> int:
    return cli.job("index", argv)


if __name__ == "__main__":
    sys.exit(main())
