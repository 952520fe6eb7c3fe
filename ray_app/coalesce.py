"""One engine call at a time; request batches that wait for it go into the next call together.

Ray Serve's `@serve.batch` (Ray ≥ 2.46) forms the next batch as soon as the previous one is
formed, not when it has finished: while the engine scores one batch, the requests arriving
meanwhile are cut into many batches of one or two requests (whatever lands within
`batch_wait_timeout_s`), each run on its own. Under sustained load the engine then scores 20-pair
calls at a fraction of its rate. The coalescer keeps `@serve.batch` as the collector and merges every
batch waiting for the engine into one call when it frees up, capped at `max_requests`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Output = TypeVar("Output")


class BatchCoalescer(Generic[Item, Output]):
    """Runs `score(items) -> outputs` (same length and order) in a worker thread, one call at a time.

    Example:
        >>> calls = []
        >>> coalescer = BatchCoalescer(lambda items: calls.append(items) or [i * 10 for i in items], max_requests=3)
        >>> async def clients():
        ...     return await asyncio.gather(coalescer.submit([1, 2]), coalescer.submit([3]), coalescer.submit([4]))
        >>> asyncio.run(clients())
        [[10, 20], [30], [40]]
        >>> calls  # three batches waited: the first two fit in one call of at most 3 items
        [[1, 2, 3], [4]]
    """

    def __init__(self, score: Callable[[list[Item]], Sequence[Output]], max_requests: int) -> None:
        self.score, self.max_requests = score, max_requests
        self._waiting: list[tuple[list[Item], asyncio.Future]] = []
        self._running = False
        self._drainer: asyncio.Task | None = None  # held: the event loop keeps only weak references to tasks

    async def submit(self, items: list[Item]) -> list[Output]:
        """Queue one batch of items and wait for their outputs."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((list(items), future))
        if not self._running:
            self._running = True
            self._drainer = asyncio.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[list[Item], asyncio.Future]]:
        """Whole waiting batches, oldest first, up to `max_requests` items (always at least one batch)."""
        taken, size = [], 0
        while self._waiting and (not taken or size + len(self._waiting[0][0]) <= self.max_requests):
            taken.append(self._waiting.pop(0))
            size += len(taken[-1][0])
        return taken

    async def _drain(self) -> None:
        try:
            while self._waiting:
                taken = self._take()
                flat = [item for items, _ in taken for item in items]
                try:
                    outputs = await asyncio.to_thread(self.score, flat)
                except Exception as exc:  # every caller of this call gets the error; the coalescer goes on
                    for _, future in taken:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for items, future in taken:
                    if not future.done():  # a cancelled request (client gone) needs no output
                        future.set_result(list(outputs[start:start + len(items)]))
                    start += len(items)
        finally:
            self._running = False
