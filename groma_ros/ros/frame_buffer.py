"""A small stamp-indexed buffer of raw camera messages.

Camera callbacks only store the message (no decoding, no pixel copies): at 30 FPS the node must do
almost nothing per frame until a query needs one. Thread-safe: callbacks and the query path run on
different executor threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time → integer nanoseconds (exact: no float rounding of stamps)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class StampedBuffer(Generic[T]):
    """Keeps the ``capacity`` most recently received items, looked up by stamp (ns)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._items: OrderedDict[int, T] = OrderedDict()
        self._lock = threading.Lock()
        self.received = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def put(self, stamp_ns: int, item: T) -> None:
        with self._lock:
            self._items.pop(stamp_ns, None)
            self._items[stamp_ns] = item
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
            self.received += 1

    def newest(self) -> tuple[int, T] | None:
        """The most recently *received* item (cameras may restamp; arrival order is what 'newest' means)."""
        with self._lock:
            if not self._items:
                return None
            stamp = next(reversed(self._items))
            return stamp, self._items[stamp]

    def exact(self, stamp_ns: int) -> T | None:
        with self._lock:
            return self._items.get(stamp_ns)

    def nearest(self, stamp_ns: int, max_diff_ns: int) -> tuple[int, T] | None:
        """The item whose stamp is closest to ``stamp_ns``, if within ``max_diff_ns``."""
        with self._lock:
            if not self._items:
                return None
            best = min(self._items, key=lambda s: abs(s - stamp_ns))
            if abs(best - stamp_ns) > max_diff_ns:
                return None
            return best, self._items[best]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
