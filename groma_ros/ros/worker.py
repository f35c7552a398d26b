"""Bounded query queue + one inference worker thread (no ROS here, so it is testable alone).

Camera and query callbacks never block on the model: they submit a job and return. The worker
runs jobs in arrival order. A full queue rejects at once (the caller answers BUSY), and every
job ends in exactly one call of its ``finish`` callback: done, canceled, or failed.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Job:
    """One query on its way through the worker."""

    query_id: str
    run: Callable[[Job], Any]  # does the work; returns the result handed to finish
    finish: Callable[[Job, Any, BaseException | None], None]  # exactly once per job
    cancel_requested: Callable[[], bool] = lambda: False  # e.g. the action client's cancel
    submitted: float = field(default_factory=time.monotonic)
    aborted: bool = False  # set when the node deactivates / shuts down

    def should_stop(self) -> bool:
        return self.aborted or self.cancel_requested()


class QueryWorker:
    """FIFO of at most ``capacity`` waiting jobs, run one at a time by a daemon thread."""

    def __init__(self, capacity: int, name: str = "groma-worker",
                 on_error: Callable[[Job, BaseException], None] | None = None) -> None:
        self.capacity = capacity
        self._on_error = on_error
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._running: Job | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._queue) + (1 if self._running else 0)

    def submit(self, job: Job) -> bool:
        """Queue a job; False (and nothing queued) when the queue is full or the worker is stopping."""
        with self._cond:
            if self._stopping or len(self._queue) >= self.capacity:
                return False
            self._queue.append(job)
            self._cond.notify()
        # Hand the GIL over now: the caller is usually the executor thread, which would otherwise keep it for its
        # next wait-set round while the woken worker waits. Measured through ROS (RESULTS.md): a cached follow-up's
        # overhead over the engine's own time falls from ~1.4 to ~1.0 ms on the 2-core CPU VM.
        time.sleep(0)
        return True

    def abort_all(self) -> list[Job]:
        """Mark the running job aborted and take every waiting job out; the caller answers those."""
        with self._cond:
            if self._running is not None:
                self._running.aborted = True
            waiting = list(self._queue)
            self._queue.clear()
        for job in waiting:
            job.aborted = True
        return waiting

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job runs or waits (e.g. before freeing the model)."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._running is not None:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._queue:
                    return
                job = self._queue.popleft()
                self._running = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = job.run(job)
            except BaseException as exc:  # noqa: BLE001 - a failed query must never kill the worker
                error = exc
            try:
                job.finish(job, result, error)
            except Exception as exc:  # noqa: BLE001 - a failed publish must not kill the worker; report it
                if self._on_error is not None:
                    self._on_error(job, exc)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()
