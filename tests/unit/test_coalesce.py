"""The engine coalescer: batches that wait for a busy engine are scored together, in order, capped."""

from __future__ import annotations

import asyncio
import threading

from rayrank.ray_app.coalesce import BatchCoalescer


class SlowEngine:
    """Records each call; the first call blocks until released, so later batches must wait."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.release = threading.Event()

    def __call__(self, jobs: list[int]) -> list[int]:
        self.calls.append(list(jobs))
        if len(self.calls) == 1:
            self.release.wait(5)
        if -1 in jobs:
            raise ValueError("bad job")
        return [j * 10 for j in jobs]


async def _staggered(coalescer: BatchCoalescer, engine: SlowEngine, batches: list[list[int]]) -> list:
    """Submit the first batch, then the others one by one while the engine is busy with it."""
    first = asyncio.ensure_future(coalescer.submit(batches[0]))
    while not engine.calls:
        await asyncio.sleep(0.001)
    rest = []
    for jobs in batches[1:]:
        rest.append(asyncio.ensure_future(coalescer.submit(jobs)))
        await asyncio.sleep(0.01)  # each batch lands alone, as @serve.batch would cut them
    engine.release.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_batches_waiting_for_the_engine_run_in_one_call():
    engine = SlowEngine()
    coalescer = BatchCoalescer(engine, max_requests=16)
    results = asyncio.run(_staggered(coalescer, engine, [[1], [2], [3, 4], [5]]))
    assert results == [[10], [20], [30, 40], [50]]
    assert engine.calls == [[1], [2, 3, 4, 5]]


def test_a_call_holds_at_most_max_requests_whole_batches():
    engine = SlowEngine()
    coalescer = BatchCoalescer(engine, max_requests=3)
    results = asyncio.run(_staggered(coalescer, engine, [[0], [1, 2], [3], [4, 5], [6, 7, 8, 9]]))
    assert results == [[0], [10, 20], [30], [40, 50], [60, 70, 80, 90]]
    # [1, 2] + [3] fill a call of 3; [4, 5] runs alone; a batch over the cap still runs, alone.
    assert engine.calls == [[0], [1, 2, 3], [4, 5], [6, 7, 8, 9]]


def test_an_engine_error_reaches_only_the_callers_of_that_call():
    engine = SlowEngine()
    coalescer = BatchCoalescer(engine, max_requests=2)
    results = asyncio.run(_staggered(coalescer, engine, [[1], [-1], [2], [3]]))
    assert results[0] == [10]
    assert all(isinstance(r, ValueError) for r in results[1:3])  # [-1] and [2] shared the failing call
    assert results[3] == [30]  # the coalescer went on


def test_a_cancelled_request_does_not_stop_the_others():
    engine = SlowEngine()
    coalescer = BatchCoalescer(engine, max_requests=8)

    async def scenario():
        first = asyncio.ensure_future(coalescer.submit([1]))
        while not engine.calls:
            await asyncio.sleep(0.001)
        gone = asyncio.ensure_future(coalescer.submit([2]))
        stays = asyncio.ensure_future(coalescer.submit([3]))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client disconnected
        engine.release.set()
        return await first, await stays

    assert asyncio.run(scenario()) == ([10], [30])
    assert engine.calls == [[1], [2, 3]]  # the cancelled batch still ran in the shared call; its result is dropped
