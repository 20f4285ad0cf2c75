"""Batches made ahead of time in background threads, so training never waits on data.

Batches are asked for by index and ``fetch(index)`` is a pure function of it, so whatever
runs ahead gives exactly what the caller would have computed: the results do not depend
on the number of workers. Threads suffice: JPEG decoding, safetensors reads and torch ops
release the GIL, and nothing (an encoder, an open file) has to be copied to another process.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class Prefetcher(Generic[T]):
    """``get(i)`` returns ``fetch(i)`` and starts ``fetch`` of the next indices in the background.

    The next indices are ``i + stride``, ``i + 2 * stride``, ...: ``stride`` is how far apart
    one caller's requests are (the number of processes, each taking every ``stride``-th
    batch). A guess that is never asked for is dropped.
    """

    def __init__(
        self, fetch: Callable[[int], T], workers: int, stride: int = 1, ahead: int | None = None
    ) -> None:
        if workers < 0:
            raise ValueError(f"data.num_workers={workers}: must be 0 (no prefetch) or more")
        self.fetch = fetch
        self.workers = workers
        self.stride = max(stride, 1)
        self.ahead = 2 * workers if ahead is None else ahead
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future[T]] = {}

    def get(self, index: int) -> T:
        if self.workers == 0:
            return self.fetch(index)
        ready = self._pending.pop(index, None)
        self._schedule(index)
        return ready.result() if ready is not None else self.fetch(index)

    def _schedule(self, index: int) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="alignkit-data")
        wanted = [index + self.stride * step for step in range(1, self.ahead + 1)]
        for stale in set(self._pending) - set(wanted):
            self._pending.pop(stale).cancel()
        for upcoming in wanted:
            if upcoming not in self._pending:
                self._pending[upcoming] = self._pool.submit(self.fetch, upcoming)
