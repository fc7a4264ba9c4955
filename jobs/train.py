"""`ray job submit -- python jobs/train.py ...`: the same command and options as `bigearth train`
(`python jobs/train.py --help`); a shim, so the KubeRay manifests may call either."""

import sys

from bigearth import cli


def main(argv: list[str] | None = None) -> int:
    return cli.job("train", argv)


if __name__ == "__main__":
    sys.exit(main())
