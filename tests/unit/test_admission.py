"""Admission arithmetic of a replica (`RerankDeployment.overload`), without Serve: the expected wait counts the
request's own pairs, and a running engine call that is slower than the measured rate lowers the rate."""

from __future__ import annotations

import time

import pytest
from rayrank.ray_app.app import RerankDeployment
from rayrank.ray_app.config import AdmissionConfig


class _Args:
    admission = AdmissionConfig(max_queue_wait_s=3.0, max_pending_pairs=4096)


def replica(pending: int, rate: float | None, call: tuple[int, float] | None = None) -> RerankDeployment:
    """The deployment's class with only what admission reads (no engine, no Serve)."""
    r = object.__new__(RerankDeployment.func_or_class)
    r.args, r.pending_pairs, r.pairs_per_s, r._call = _Args(), pending, rate, call
    return r


def test_the_wait_counts_the_request_s_own_pairs():
    assert replica(pending=280, rate=100.0).overload(20) is None  # (280 + 20) / 100 = 3.0 s: admitted
    refusal = replica(pending=281, rate=100.0).overload(20)
    assert refusal.status == 429 and "3.01s of work at 100 pairs/s" in refusal.message
    assert refusal.headers["Retry-After"] == "4"
    assert replica(pending=0, rate=100.0).overload(10_000) is None  # an empty queue admits anything


def test_a_running_call_slower_than_the_average_lowers_the_rate():
    # 100 pairs started 2 s ago at an average of 100 pairs/s: it has already run twice as long.
    slow = replica(pending=150, rate=100.0, call=(100, time.perf_counter() - 2.0))
    assert slow._rate() == pytest.approx(50.0, rel=0.05)
    refusal = slow.overload(20)  # (150 + 20) / 50 = 3.4 s > 3 s; at 100 pairs/s it would be admitted
    assert refusal is not None and "pairs/s" in refusal.message
    on_time = replica(pending=150, rate=100.0, call=(100, time.perf_counter() - 0.5))
    assert on_time._rate() == 100.0 and on_time.overload(20) is None


def test_a_replica_without_a_rate_admits_only_into_an_empty_queue():
    assert replica(pending=0, rate=None).overload(20) is None
    refusal = replica(pending=20, rate=None).overload(20)
    assert refusal.status == 429 and "warming up" in refusal.message and refusal.headers["Retry-After"] == "1"
