"""A small buffer of raw camera messages, each kept with its arrival sequence number and arrival time.

Camera callbacks only store the message (no decoding, no pixel copies): at 30 FPS the node must do almost
nothing per frame until a query needs one. A frame's identity is its arrival sequence number, not its stamp:
cameras that do not stamp (stamp 0), or that resend a stamp, still deliver distinct frames. Stamps serve
selection (newest stamp, exact stamp, nearest stamp); arrival times serve staleness, which therefore works
whatever clock the camera stamps with. Thread-safe: callbacks and the query path may run on different threads.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_arrivals = itertools.count(1)  # one sequence for every buffer of the process: (camera, seq) is never reused


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time → integer nanoseconds (exact: no float rounding of stamps)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


@dataclass(frozen=True)
class Frame(Generic[T]):
    """One received message: ``seq`` identifies it, ``stamp_ns`` is its header stamp, ``arrived`` its
    ``time.monotonic()`` arrival time."""

    seq: int
    stamp_ns: int
    arrived: float
    msg: T

    def age_s(self, now: float | None = None) -> float:
        """Seconds since arrival on this machine's steady clock."""
        return (time.monotonic() if now is None else now) - self.arrived


class FrameBuffer(Generic[T]):
    """The ``capacity`` most recent arrivals; looked up by newest, exact or nearest stamp.

    Among frames with equal stamps the latest arrival wins, so a camera that never stamps behaves as
    "last received".
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._frames: deque[Frame[T]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.received = 0

    @property
    def capacity(self) -> int:
        return int(self._frames.maxlen or 0)

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)

    def put(self, stamp_ns: int, msg: T, arrived: float | None = None) -> Frame[T]:
        frame = Frame(next(_arrivals), int(stamp_ns), time.monotonic() if arrived is None else arrived, msg)
        with self._lock:
            self._frames.append(frame)
            self.received += 1
        return frame

    def newest(self) -> Frame[T] | None:
        """The frame with the newest stamp (a late, older frame never hides a fresh one)."""
        with self._lock:
            return max(self._frames, key=lambda f: (f.stamp_ns, f.seq), default=None)

    def latest_arrival(self) -> Frame[T] | None:
        with self._lock:
            return self._frames[-1] if self._frames else None

    def exact(self, stamp_ns: int) -> Frame[T] | None:
        """The latest arrival with exactly this stamp."""
        with self._lock:
            return next((f for f in reversed(self._frames) if f.stamp_ns == stamp_ns), None)

    def nearest(self, stamp_ns: int, max_diff_ns: int) -> Frame[T] | None:
        """The frame whose stamp is closest to ``stamp_ns`` (latest arrival on ties), if within ``max_diff_ns``."""
        with self._lock:
            best = min(self._frames, key=lambda f: (abs(f.stamp_ns - stamp_ns), -f.seq), default=None)
        if best is None or abs(best.stamp_ns - stamp_ns) > max_diff_ns:
            return None
        return best

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()
