"""The season of an acquisition: meteorological seasons of the northern hemisphere (the archive is European).
One definition for the index's `season` payload, the page's filters and evaluation by season."""

from __future__ import annotations

from typing import Literal

Season = Literal["winter", "spring", "summer", "autumn"]
#: In calendar order from December: winter = Dec-Feb, spring = Mar-May, summer = Jun-Aug, autumn = Sep-Nov.
SEASONS: tuple[Season, ...] = ("winter", "spring", "summer", "autumn")


def season(month: int) -> Season:
    """The meteorological season of a month (1-12)."""
    if not 1 <= int(month) <= 12:
        raise ValueError(f"month must be 1-12, got {month}")
    return SEASONS[(int(month) % 12) // 3]
