"""Admission by expected wait: with a pair bound far away, a replica refuses without queueing (429, JSON, and a
`Retry-After` that is the measured drain time) as soon as the pairs ahead of a request would take longer
than `admission.max_queue_wait_s` at its measured pairs/s (each 429 sent after `admission.refusal_hold_s`);
the requests it admits wait about that long."""

from __future__ import annotations

import math
import re
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.serve.conftest import running, tiny_args

HOLD = 0.25
DOCS = [" ".join(["ray cluster python data model query document search rank score"] * 5)] * 32


def test_refuses_beyond_the_expected_wait_with_the_drain_time(ray_cluster, tiny_cross_encoder):
    args = tiny_args(tiny_cross_encoder, "cross-encoder", batching={"max_batch_size": 1},
                     admission={"max_queue_wait_s": 0.2, "max_pending_pairs": 100_000,
                                "refusal_hold_s": HOLD})
    with running(args, max_ongoing_requests=64, max_queued_requests=-1) as url:
        def one(i):
            started = time.perf_counter()
            response = requests.post(url + "/v1/rerank", json={"query": f"ray {i}", "documents": DOCS}, timeout=120)
            return response, time.perf_counter() - started

        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(one, range(64)))
        refused = [(r, s) for r, s in answers if r.status_code == 429]
        served = [(r, s) for r, s in answers if r.status_code == 200]
        assert len(refused) + len(served) == len(answers) and refused and served
        rate = requests.get(url + "/healthz", timeout=30).json()["pairs_per_s"]
        for response, _ in refused:
            error = response.json()["error"]
            assert error["type"] == "overloaded" and "of work at" in error["message"], error
            _, wait = re.search(r"(\d+) pairs queued, ([\d.]+)s of work", error["message"]).groups()
            retry = int(response.headers["Retry-After"])  # from the unrounded wait
            assert float(wait) >= 0.2 and retry - max(1, math.ceil(float(wait))) in (0, 1), (wait, retry)
        # Each refusal is held `refusal_hold_s` (a lower bound only: how long anything takes on shared cores is
        # not asserted; that a refusal skips the queue is the arithmetic of tests/unit/test_admission.py).
        assert min(s for _, s in refused) >= HOLD
        assert rate > 0 and requests.get(url + "/healthz", timeout=30).json()["stats"]["pending_pairs"] == 0
