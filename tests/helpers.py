"""Paths and small helpers shared by the tests (imported as `helpers`: tests/ is on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIGEARTH_SHARED", REPO.parent / "shared"))
BEN = SHARED / "bigearthnet"
REAL_V1 = BEN / "real" / "v1"
REAL_V2 = BEN / "real" / "v2"
LISTS_V1 = BEN / "lists" / "v1"
LISTS_V2 = BEN / "lists" / "v2"
FACTS = BEN / "FACTS.md"
