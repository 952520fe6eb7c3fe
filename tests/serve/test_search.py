"""`POST /v1/search` over real HTTP: BM25 over a small corpus, a tiny cross-encoder, then the LLM stage
against the OpenAI-compatible stand-in, each its own Serve deployment; per-stage meta, 4xx naming the
field, no fallback without a budget, and a slow LLM answered from the cross-encoder at the deadline."""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from rayrank import loadtest
from rayrank.config import ConfigError, parse_config
from rayrank.ray_app.search_config import SearchArgs
from rayrank.validate import NON_BLANK_PATTERN
from tests.openai_standin import standin
from tests.serve.conftest import API_KEYS, free_port, post
from tests.tiny_models import WORDS


def write_corpus(folder: Path, n: int = 60, words: int = 12) -> Path:
    """`n` documents `doc-0..` of `words` words of the tiny vocabulary, so BM25 finds some for any query."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(words)) for i in range(n)]
    pq.write_table(pa.table({"doc_id": [f"doc-{i}" for i in range(n)], "text": texts}), folder / "corpus.parquet")
    return folder / "corpus.parquet"


def funnel_args(corpus: Path, reranker: Path, llm_url: str | None = None, **settings) -> SearchArgs:
    """BM25 (k 20) -> cross-encoder (k 5), then (with `llm_url`) the listwise LLM (k 3, the stand-in's `reverse`)."""
    stages = [{"kind": "bm25", "name": "bm25", "k": 20, "stemmer": "none"},
              {"kind": "rerank", "name": "rerank", "k": 5,
               "engine": {"model": str(reranker), "scorer": "cross-encoder"}}]
    if llm_url:
        stages.append({"kind": "llm", "name": "llm", "k": 3, "url": llm_url, "model": "reverse", "timeout_s": 20})
    small = {"deployments": {s["name"]: {"num_cpus": 0.5 if s["kind"] != "llm" else 0} for s in stages}}
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
def llm():
    with standin() as server:
        yield server


@pytest.fixture(scope="module")
def url(ray_cluster, tiny_cross_encoder, tmp_path_factory, llm):
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"))
    args = funnel_args(corpus, tiny_cross_encoder, llm.url, auth={"api_keys_env": "RAYRANK_TEST_KEYS"})
    with running_search(args) as base:
        yield base


def search(url: str, payload, key: str | None = API_KEYS[0]) -> requests.Response:
    return post(url, "/v1/search", payload, headers={"Authorization": f"Bearer {key}"} if key else {})


def test_search_runs_every_stage_and_times_each(url, llm):
    response = search(url, {"query": "ray cluster python", "top_n": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    stages = body["meta"]["stages"]
    assert [(s["name"], s["kind"], s["documents_in"], s["documents_out"], s["skipped"]) for s in stages] == \
        [("bm25", "bm25", 0, 20, None), ("rerank", "rerank", 20, 5, None), ("llm", "llm", 5, 3, None)]
    assert all(s["ms"] > 0 for s in stages) and body["meta"]["total_ms"] >= stages[-1]["ms"]
    assert body["meta"]["fallback"] is None
    # the LLM saw the cross-encoder's 5 best and (as `reverse`) put them in reverse order
    prompt = llm.requests[-1]["body"]["messages"][-1]["content"]
    shown = re.findall(r"^\[(doc-\d+)\]", prompt, re.M)
    assert len(shown) == 5 and [r["id"] for r in body["results"]] == shown[::-1][:2]
    assert [r["score"] for r in body["results"]] == [5.0, 4.0]


def test_a_malformed_llm_answer_keeps_the_cross_encoders_order_and_is_counted(url, llm):
    llm.behaviour = "malformed"
    try:
        body = search(url, {"query": "sun light"}).json()
    finally:
        llm.behaviour = None
    assert body["meta"]["fallback"] is None and [r["score"] for r in body["results"]] == [5.0, 4.0, 3.0]
    prompt = llm.requests[-1]["body"]["messages"][-1]["content"]
    assert [r["id"] for r in body["results"]] == re.findall(r"^\[(doc-\d+)\]", prompt, re.M)[:3]
    assert prometheus_total("rayrank_search_stage_events", 'event="failure:malformed_answer"') >= 1


def prometheus_total(metric: str, having: str = "", at_least: float = 1.0, wait_s: float = 40.0) -> float:
    """`ray_METRIC` summed over its series whose tags contain `having`, as Ray's metrics agent exports it;
    polled until it reaches `at_least` (the agent exports every few seconds) or `wait_s` passes."""
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    total, deadline = 0.0, time.monotonic() + wait_s
    while time.monotonic() < deadline:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        series = re.findall(rf"^ray_{metric}(?:_total)?\{{([^}}]*)\}} (\S+)$", text, re.M)
        total = sum(float(value) for tags, value in series if having in tags)
        if total >= at_least:
            return total
        time.sleep(2)
    return total


def test_default_top_n_and_a_generous_budget_do_not_fall_back(url):
    for budget in (None, 60_000):
        payload = {"query": "fish sea light"} | ({} if budget is None else {"latency_budget_ms": budget})
        body = search(url, payload).json()
        assert len(body["results"]) == 3 and body["meta"]["fallback"] is None  # the last stage's k


def test_a_slow_llm_past_the_budget_is_answered_from_the_reranker(url, llm):
    llm.behaviour, llm.delay_s = "slow", 8.0
    try:
        body = search(url, {"query": "dog cat", "latency_budget_ms": 3000}).json()
    finally:
        llm.behaviour = None
    assert body["meta"]["fallback"] == [{"stage": "llm", "reason": "deadline", "answered_from": "rerank"}]
    assert body["meta"]["stages"][2]["skipped"] == "deadline" and len(body["results"]) == 3
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and scores != [3.0, 2.0, 1.0]  # cross-encoder scores
    assert search(url, {"query": "dog cat", "latency_budget_ms": 60_000}).json()["meta"]["fallback"] \
        is None


@pytest.mark.parametrize(("payload", "status", "field"), [
    ({"query": ""}, 422, "query"),
    ({"query": "   "}, 422, "query"),
    ({"query": "\u001e"}, 422, "query"),
    ({"query": " \t\n"}, 422, "query"),
    ({"query": "\u00a0"}, 422, "query"),
    ({"query": "\u2028"}, 422, "query"),
    ({"top_n": 3}, 422, "query"),
    ({"query": "ray", "top_n": 0}, 422, "top_n"),
    ({"query": "ray", "top_n": 4}, 422, "top_n"),
    ({"query": "ray", "latency_budget_ms": -5}, 422, "latency_budget_ms"),
    ({"query": "ray", "topn": 3}, 422, "topn"),
])
def test_bad_requests_name_the_field(url, payload, status, field):
    response = search(url, payload)
    assert response.status_code == status and response.json()["error"]["field"] == field, response.text


def test_the_schema_states_the_white_space_rule(url):
    doc = requests.get(url + "/openapi.json", timeout=30, headers={"Authorization": f"Bearer {API_KEYS[0]}"}).json()
    query = doc["components"]["schemas"]["SearchRequest"]["properties"]["query"]
    assert query["pattern"] == NON_BLANK_PATTERN and query["minLength"] == 1


def test_invalid_json_is_a_400(url):
    response = requests.post(url + "/v1/search", data=b"{not json", timeout=30,
                             headers={"content-type": "application/json", "Authorization": f"Bearer {API_KEYS[1]}"})
    assert response.status_code == 400 and response.json()["error"]["field"] == "body"


def test_healthz_counts_requests_and_shows_the_reranker_clock(url):
    search(url, {"query": "dog run fast"})
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


def test_search_needs_an_api_key_when_keys_are_set(url):
    for key in (None, "key-one"):
        response = search(url, {"query": "ray"}, key=key)
        assert response.status_code == 401 and response.json()["error"]["type"] == "unauthorized"
    assert search(url, {"query": "ray"}, key=API_KEYS[1]).status_code == 200
    assert requests.get(url + "/healthz", timeout=30).json()["stats"]["rejected_unauthorized"] >= 2


def test_loadtest_against_search_reports_fallback_share_and_stage_table(url, tmp_path, capsys):
    code = loadtest.main([url, "--path", "/v1/search", "--qps", "4", "--duration", "1", "--docs", "3",
                          "--budget-ms", "60000", "--api-key", API_KEYS[0], "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| stage | kind | docs_in | docs_out | p50 | p99 | skipped_share |" in printed
    assert "| rerank | rerank | 20 | 5 |" in printed
    (row,) = csv.DictReader((tmp_path / "results.csv").open())
    assert row["fallback_share"] == "0.0" and int(row["ok"]) == int(row["sent"]) > 0


def test_the_shipped_search_config_validates():
    from ray.serve.schema import ServeDeploySchema

    from rayrank.config import load_yaml

    data = load_yaml(Path(__file__).resolve().parents[2] / "configs" / "search.scifact.yaml")
    (app,) = ServeDeploySchema.model_validate(data).applications
    assert app.import_path == "rayrank.ray_app.search:build_search_app"
    args = parse_config(SearchArgs, app.args, "configs/search.scifact.yaml: args")
    assert [s.kind for s in args.funnel.stages] == ["bm25", "late-interaction", "fuse", "rerank"]
