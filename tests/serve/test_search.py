"""`POST /v1/search` over real HTTP: BM25 over a small corpus, then a tiny cross-encoder, each its own
Serve deployment; per-stage meta, 4xx naming the field, and no fallback without a budget."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from rayrank.config import ConfigError, parse_config
from rayrank.ray_app.search_config import SearchArgs
from tests.serve.conftest import free_port, post
from tests.tiny_models import WORDS


def write_corpus(folder: Path, n: int = 60) -> Path:
    """`n` documents `doc-0..`, each a few words of the tiny vocabulary, so BM25 finds some for any query."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(12)) for i in range(n)]
    pq.write_table(pa.table({"doc_id": [f"doc-{i}" for i in range(n)], "text": texts}), folder / "corpus.parquet")
    return folder / "corpus.parquet"


def funnel_args(corpus: Path, reranker: Path, rerank_k: int = 5, **settings) -> SearchArgs:
    stages = [{"kind": "bm25", "name": "bm25", "k": 20, "stemmer": "none"},
              {"kind": "rerank", "name": "rerank", "k": rerank_k,
               "engine": {"model": str(reranker), "scorer": "cross-encoder"}}]
    small = {"deployments": {"bm25": {"num_cpus": 0.5}, "rerank": {"num_cpus": 0.5}}}  # the session's Ray has 2 CPUs
    return parse_config(SearchArgs, {"funnel": {"corpus": {"path": str(corpus)}, "stages": stages},
                                     **small, **settings}, "test")


@contextmanager
def running_search(args: SearchArgs) -> Iterator[str]:
    """Run the search app on the session's Ray and yield its base URL; shut Serve down after."""
    from ray import serve

    from rayrank.ray_app.search import build_search_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_search_app(args), name="search", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def url(ray_cluster, tiny_cross_encoder, tmp_path_factory):
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"))
    with running_search(funnel_args(corpus, tiny_cross_encoder)) as base:
        yield base


def test_search_returns_the_rerankers_best_with_each_stages_timing(url):
    response = post(url, "/v1/search", {"query": "ray cluster python", "top_n": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    scores = [r["score"] for r in body["results"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert all(r["id"].startswith("doc-") for r in body["results"])
    stages = body["meta"]["stages"]
    assert [(s["name"], s["kind"], s["documents_out"], s["skipped"]) for s in stages] == \
        [("bm25", "bm25", 20, None), ("rerank", "rerank", 5, None)]
    assert stages[1]["documents_in"] == 20 and all(s["ms"] > 0 for s in stages)
    assert body["meta"]["fallback"] is None and body["meta"]["total_ms"] >= stages[1]["ms"]


def test_default_top_n_and_a_generous_budget_do_not_fall_back(url):
    for budget in (None, 60_000):
        payload = {"query": "fish sea light"} | ({} if budget is None else {"latency_budget_ms": budget})
        body = post(url, "/v1/search", payload).json()
        assert len(body["results"]) == 5 and body["meta"]["fallback"] is None  # the last stage's k


@pytest.mark.parametrize(("payload", "status", "field"), [
    ({"query": ""}, 422, "query"),
    ({"query": "   "}, 422, "query"),
    ({"top_n": 3}, 422, "query"),
    ({"query": "ray", "top_n": 0}, 422, "top_n"),
    ({"query": "ray", "top_n": 6}, 422, "top_n"),
    ({"query": "ray", "latency_budget_ms": -5}, 422, "latency_budget_ms"),
    ({"query": "ray", "topn": 3}, 422, "topn"),
])
def test_bad_requests_name_the_field(url, payload, status, field):
    response = post(url, "/v1/search", payload)
    assert response.status_code == status and response.json()["error"]["field"] == field, response.text


def test_invalid_json_is_a_400(url):
    response = requests.post(url + "/v1/search", data=b"{not json", headers={"content-type": "application/json"},
                             timeout=30)
    assert response.status_code == 400 and response.json()["error"]["field"] == "body"


def test_healthz_counts_requests_and_shows_the_reranker_clock(url):
    post(url, "/v1/search", {"query": "dog run fast"})
    stats = requests.get(url + "/healthz", timeout=30).json()["stats"]
    assert stats["requests"] >= 1 and stats["rejected_invalid_request"] >= 1
    assert stats["stages"]["rerank"]["pending_documents"] == 0 and stats["stages"]["rerank"]["ms_per_document"] > 0


def test_args_errors_name_the_key(tmp_path, tiny_cross_encoder):
    corpus = write_corpus(tmp_path)
    with pytest.raises(ConfigError, match="deployments: 'rerankr' not a stage of the funnel"):
        funnel_args(corpus, tiny_cross_encoder, deployments={"rerankr": {"num_replicas": 2}})
    with pytest.raises(ConfigError, match="deployments.rerank.num_replica: unknown key"):
        funnel_args(corpus, tiny_cross_encoder, deployments={"rerank": {"num_replica": 2}})
    with pytest.raises(ConfigError, match=r"default_top_n: at most the last stage's k \(5\)"):
        funnel_args(corpus, tiny_cross_encoder, default_top_n=6)
