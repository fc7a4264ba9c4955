"""`ray job submit -- python jobs/evaluate_retrieval.py ...`: the same command and options as
`bigearth evaluate-retrieval` (`python jobs/evaluate_retrieval.py --help`);
a shim, so the KubeRay manifests may call either."""

import sys

from bigearth import cli


def main(argv: list[str] | None = None) -> int:
    return cli.job("evaluate-retrieval", argv)


if __name__ == "__main__":
    sys.exit(main())
