"""The GPU recipe's check of the carried wheels (docs/benchmarks.md, "GPU check"): after they are installed into a
folder put first on PYTHONPATH, `pip check` over the whole environment, keeping only the conflicts that involve a
carried package (as the one with the requirement or as the one required); the machine's own conflicts are not ours.

    PYTHONPATH=/tmp/site python3 bench/carried_check.py /tmp/whl      # exit 1 (the lines printed) on a conflict
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

#: `pip check`'s two kinds of line: "<dist> <version> has requirement <req>, but you have <name> <version>." and
#: "<dist> <version> requires <name>, which is not installed."
REQUIRED = re.compile(r" (?:has requirement|requires) ([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """A distribution's name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_names(folder: Path) -> set[str]:
    """The canonical names of the wheels in `folder` (a wheel's file name starts with its name)."""
    return {canonical(w.name.split("-")[0]) for w in folder.glob("*.whl")}


def conflicts(lines: list[str], carried: set[str]) -> list[str]:
    """The lines of `pip check` whose distribution or requirement is carried."""
    kept = []
    for line in lines:
        words = line.split()
        required = REQUIRED.search(line)
        names = {canonical(words[0])} if words else set()
        if required:
            names.add(canonical(required.group(1)))
        if names & carried:
            kept.append(line)
    return kept


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    carried = wheel_names(Path(args[0]))
    if not carried:
        print(f"carried_check: no wheel in {args[0]}", file=sys.stderr)
        return 2
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    found = conflicts(done.stdout.splitlines(), carried)
    for line in found:
        print("carried_check:", line)
    print(f"carried_check: {len(carried)} carried packages, {len(found)} conflicts", flush=True)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
