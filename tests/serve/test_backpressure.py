"""A cross-encoder app with tiny queues: probabilities and logits, the query cache with a separate
bi-encoder, and overload answered with 429 + Retry-After by both bounds — the replica's expected wait
and Serve's queue — (never a 500, never an unbounded queue), then normal service again."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

import rayrank
from tests.serve.conftest import post, running, tiny_args

DOCS = [" ".join(["ray cluster python data model query document search rank score"] * 4)] * 8


@pytest.fixture(scope="module")
def url(ray_cluster, tiny_cross_encoder, tiny_encoder):
    args = tiny_args(tiny_cross_encoder, "cross-encoder",
                     cache={"enabled": True, "model": str(tiny_encoder), "threshold": 0.9999},
                     batching={"max_batch_size": 2, "batch_wait_timeout_s": 0.05},
                     admission={"max_pending_pairs": 2 * len(DOCS)})
    with running(args, max_ongoing_requests=8, max_queued_requests=4,
                 backpressure_config={"status_code": 429, "retry_after_s": 2}) as base:
        yield base


def test_cross_encoder_scores_are_probabilities_and_raw_logits_on_request(url, tiny_cross_encoder):
    docs = ["ray cluster", "fish sea", "python data"]
    logits = rayrank.Reranker(str(tiny_cross_encoder)).score("what is ray", docs)
    cohere = post(url, "/v1/rerank", {"query": "what is ray", "documents": docs}).json()["results"]
    tei = post(url, "/rerank", {"query": "what is ray", "texts": docs, "raw_scores": True}).json()
    np.testing.assert_allclose([r["relevance_score"] for r in cohere], np.sort(rayrank.sigmoid(logits))[::-1],
                               rtol=1e-4)
    np.testing.assert_allclose([r["score"] for r in tei], np.sort(logits)[::-1], rtol=1e-4)
    again = post(url, "/v1/rerank", {"query": "What is RAY", "documents": docs[::-1]}).json()
    assert again["meta"]["cached"] and [docs[::-1][r["index"]] for r in again["results"]] == \
        [docs[r["index"]] for r in cohere]


def test_a_flood_gets_429_with_retry_after_and_service_recovers(url):
    def one(i):  # distinct queries: no cache hits
        response = requests.post(url + "/v1/rerank", json={"query": f"what is ray {i}", "documents": DOCS},
                                 timeout=120)
        return response.status_code, response.headers.get("Retry-After"), response.text

    with ThreadPoolExecutor(48) as pool:
        answers = list(pool.map(one, range(48)))
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 429}, statuses  # no 500s, no timeouts
    assert statuses.count(200) >= 1 and statuses.count(429) >= 1
    assert all(retry and int(retry) >= 1 for status, retry, _ in answers if status == 429)
    # The replica's own bound answers JSON; Serve's queue bound (max_queued_requests) answers plain text.
    ours = [text for status, _, text in answers if status == 429 and text.startswith("{")]
    assert ours and all('"type":"overloaded"' in text for text in ours)

    health = requests.get(url + "/healthz", timeout=30).json()["stats"]
    assert health["pending_pairs"] == 0 and health["rejected_overloaded"] == len(ours)
    assert post(url, "/v1/rerank", {"query": "python data", "documents": DOCS[:2]}).status_code == 200
