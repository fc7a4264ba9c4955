"""`ray job submit -- python jobs/evaluate.py ...`: the same command and options as `bigearth evaluate`
(`python jobs/evaluate.py --help`); a shim, so the KubeRay manifests may call either."""

import sys

from bigearth import cli


def main(argv: list[str] | None = None) -> int:
    return cli.job("evaluate", argv)


if __name__ == "__main__":
    sys.exit(main())
