"""Deadline-aware fallback over real HTTP: a MiniLM-sized cross-encoder taking one request at a time falls
back to BM25's list under a burst of requests with a tight budget, and does not when idle; Prometheus
and `/healthz` count the fallbacks."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from bench._common import minilm_cross_encoder
from tests.serve.conftest import post
from tests.serve.test_search import funnel_args, prometheus_total, running_search, write_corpus

BURST = 24


@pytest.fixture(scope="module")
def url(ray_cluster, tmp_path_factory):
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"), n=80, words=40)
    reranker = minilm_cross_encoder(tmp_path_factory.mktemp("minilm-ce"))
    args = funnel_args(corpus, reranker, deployments={
        "bm25": {"num_cpus": 0.5},
        "rerank": {"num_cpus": 0.5, "max_batch_size": 1}})  # one request per engine call: a real queue
    with running_search(args) as base:
        for _ in range(3):  # the reranker's clock learns its service time
            assert post(base, "/v1/search", {"query": "ray cluster"}).status_code == 200
        yield base


def clock(url: str) -> dict:
    return requests.get(url + "/healthz", timeout=30).json()["stats"]


def test_an_idle_reranker_answers_within_a_generous_budget(url):
    for query in ("python data model", "fish sea light", "dog cat run"):
        body = post(url, "/v1/search", {"query": query, "latency_budget_ms": 60_000}).json()
        assert body["meta"]["fallback"] is None and body["meta"]["stages"][1]["skipped"] is None


def test_a_slow_reranker_under_a_burst_falls_back_to_bm25_and_recovers(url):
    stats = clock(url)
    service_ms = stats["stages"]["rerank"]["ms_per_document"] * 20  # 20 BM25 documents a request
    budget = 3 * service_ms + 50  # three requests' worth: most of a burst of 24 cannot make it
    before = sum(v for k, v in stats.items() if k.startswith("fallback_rerank_"))
    payloads = [{"query": f"ray cluster query {i}", "latency_budget_ms": budget} for i in range(BURST)]
    with ThreadPoolExecutor(BURST) as pool:
        answers = list(pool.map(lambda p: post(url, "/v1/search", p), payloads))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    fell = [a.json() for a in answers if a.json()["meta"]["fallback"]]
    assert fell, f"no fallback in a burst of {BURST} at a {budget:.0f} ms budget"
    for body in fell:
        (fallback,) = body["meta"]["fallback"]
        assert fallback["stage"] == "rerank" and fallback["answered_from"] == "bm25"
        assert fallback["reason"] in ("queue", "deadline")
        assert len(body["results"]) == 5 and body["meta"]["stages"][1]["skipped"] == fallback["reason"]
    after = clock(url)
    assert sum(v for k, v in after.items() if k.startswith("fallback_rerank_")) - before == len(fell)
    assert after["stages"]["rerank"]["pending_documents"] == 0
    # the burst is over: the same budget is met by the reranker again
    time.sleep(1.0)
    body = post(url, "/v1/search", {"query": "ray cluster", "latency_budget_ms": budget + 60_000}).json()
    assert body["meta"]["fallback"] is None
    assert prometheus_total("rayrank_search_fallbacks", 'stage="rerank"', at_least=len(fell)) >= len(fell)
