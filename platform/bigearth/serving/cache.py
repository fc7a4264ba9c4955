"""A small time-bounded LRU cache for answers that are costly to compute and may be a little stale: the Retriever's
filter counts (browse totals) and facets, which each scan the collection."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

#: How long a browse total or the facets are reused (docs/api.md "Limits"): a re-index shows up within this time.
COUNT_TTL_S = 60.0
COUNT_ENTRIES = 256  # distinct filters remembered


class TtlCache:
    """`get(key, compute)`: the value computed for `key` less than `ttl_s` ago, else `compute()` (stored); at most
    `entries` keys, the least recently used dropped first."""

    def __init__(
        self, ttl_s: float = COUNT_TTL_S, entries: int = COUNT_ENTRIES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s, self.entries, self._clock = ttl_s, entries, clock
        self._items: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        now = self._clock()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and now - hit[0] < self.ttl_s:
                self._items.move_to_end(key)
                return hit[1]
        value = compute()
        with self._lock:
            self._items[key] = (now, value)
            self._items.move_to_end(key)
            while len(self._items) > self.entries:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget everything (the index was switched: its counts are another index's)."""
        with self._lock:
            self._items.clear()
