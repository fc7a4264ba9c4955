"""Patch names of both archive versions: parsing, the known quirks, and the paths derived from names.

Quirks handled (FACTS.md 1.2, 2.2):
- v1 S2 names may lack the hour's leading zero (`..._20170924T93020_69_24`); the time in such a name can even be
  invalid (`T94161`), so the acquisition time of a v1 patch comes from its JSON, and only the date from the name.
- v1 h/v are not zero-padded; v2 S2 ids pad them to 2 digits; v2 `s1_name` keeps the unpadded v1 S1 name.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import date, datetime

# bigearthnet_common BEN_S2_RE / BEN_S1_RE, with the hour-digit bug allowed (5 or 6 time digits).
V1_S2_RE = re.compile(r"^(?P<sat>S2[AB])_MSIL2A_(?P<date>\d{8})T(?P<time>\d{5,6})_(?P<h>\d{1,2})_(?P<v>\d{1,2})$")
V2_S2_RE = re.compile(
    r"^(?P<sat>S2[AB])_MSIL2A_(?P<date>\d{8})T(?P<time>\d{6})_N9999_R(?P<orbit>\d{3})_T(?P<tile>\w{5})"
    r"_(?P<h>\d{2})_(?P<v>\d{2})$"
)
S1_RE = re.compile(
    r"^(?P<sat>S1[AB])_IW_GRDH_1SDV_(?P<date>\d{8})T(?P<time>\d{6})_(?P<tile>\w{5})_(?P<h>\d{1,2})_(?P<v>\d{1,2})$"
)
#: An archived pair's id as the HTTP API takes it: its S2 patch name, v1 or v2, exactly V1_S2_RE or V2_S2_RE, written
#: in the syntax Python's `re` and the OpenAPI document's (ECMA-262) patterns read alike: `[0-9]`, not `\d` (which
#: is Unicode in Python). Match it with `fullmatch` (Python's `$` also matches before a final newline).
S2_ID_PATTERN = (
    r"^S2[AB]_MSIL2A_[0-9]{8}T(?:[0-9]{5,6}_[0-9]{1,2}_[0-9]{1,2}"
    r"|[0-9]{6}_N9999_R[0-9]{3}_T[0-9A-Z]{5}_[0-9]{2}_[0-9]{2})$"
)
S2_ID_RE = re.compile(S2_ID_PATTERN)
#: A patch id safe to use in a path or an object key (either version, S1 or S2).
SAFE_ID_RE = re.compile(r"^S[12][AB]_[A-Z0-9_]{10,80}$")


class PatchNameError(ValueError):
    """A patch name does not follow the archive's naming scheme."""


@dataclass(frozen=True)
class S2Name:
    name: str
    version: int
    satellite: str
    day: date
    time_digits: str
    h: int
    v: int
    tile: str | None  # v1 S2 names carry no tile
    orbit: int | None

    @property
    def tile_product(self) -> str:
        """v2 folder of the tile product: the patch id minus `_hh_vv`."""
        return self.name.rsplit("_", 2)[0]

    @property
    def timestamp(self) -> datetime | None:
        """Acquisition time from the name, or None where the name's time is invalid (v1 hour-digit bug)."""
        digits = self.time_digits.zfill(6)
        try:
            return datetime.strptime(self.day.strftime("%Y%m%d") + digits, "%Y%m%d%H%M%S")
        except ValueError:
            return None


@dataclass(frozen=True)
class S1Name:
    name: str
    satellite: str
    timestamp: datetime
    tile: str
    h: int
    v: int

    @property
    def scene(self) -> str:
        """v2 folder of the S1 scene: the name minus `_TILE_h_v`."""
        return self.name.rsplit("_", 3)[0]


@functools.lru_cache(maxsize=1 << 16)  # a pair's 12 band paths parse its name 12 times; results are frozen
def parse_s2(name: str) -> S2Name:
    """Parse a v1 or v2 Sentinel-2 patch name; raises `PatchNameError` saying what was expected."""
    m = V2_S2_RE.match(name)
    if m:
        return S2Name(
            name, 2, m["sat"], _day(name, m["date"]), m["time"], int(m["h"]), int(m["v"]), m["tile"], int(m["orbit"])
        )
    m = V1_S2_RE.match(name)
    if m:
        return S2Name(name, 1, m["sat"], _day(name, m["date"]), m["time"], int(m["h"]), int(m["v"]), None, None)
    raise PatchNameError(
        f"{name!r} is not a Sentinel-2 patch name: expected S2[AB]_MSIL2A_<YYYYMMDD>T<hhmmss>_<h>_<v> (v1) or "
        "S2[AB]_MSIL2A_<YYYYMMDD>T<hhmmss>_N9999_R<orbit>_T<tile>_<hh>_<vv> (v2)"
    )


@functools.lru_cache(maxsize=1 << 16)
def parse_s1(name: str) -> S1Name:
    """Parse a Sentinel-1 patch name (the same in v1 and v2)."""
    m = S1_RE.match(name)
    if not m:
        raise PatchNameError(
            f"{name!r} is not a Sentinel-1 patch name: expected S1[AB]_IW_GRDH_1SDV_<YYYYMMDD>T<hhmmss>_<tile>_<h>_<v>"
        )
    try:
        ts = datetime.strptime(m["date"] + m["time"], "%Y%m%d%H%M%S")
    except ValueError:
        raise PatchNameError(f"{name!r}: invalid acquisition date/time {m['date']}T{m['time']}") from None
    return S1Name(name, m["sat"], ts, m["tile"], int(m["h"]), int(m["v"]))


def _day(name: str, digits: str) -> date:
    try:
        return datetime.strptime(digits, "%Y%m%d").date()
    except ValueError:
        raise PatchNameError(f"{name!r}: invalid acquisition date {digits}") from None


def check_safe_id(patch_id: str) -> str:
    """Return `patch_id` if it can be used in a path or key; raise `PatchNameError` otherwise."""
    if not SAFE_ID_RE.match(patch_id):
        raise PatchNameError(f"{patch_id!r} is not a valid patch id (letters, digits and '_' only, S1/S2 prefix)")
    return patch_id
