"""Ingest entrypoint for `ray job submit -- python jobs/ingest.py --archive URI --out URI [...]`.

Same options as `bigearth ingest` (see `python jobs/ingest.py --help`).
"""

import sys

from bigearth.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
