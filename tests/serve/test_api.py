"""The HTTP API of a real Serve app (tiny late-interaction model, semantic cache on), over 127.0.0.1.

Scores are checked against the in-process engine, so a mix-up while flattening and splitting a
batch cannot pass.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

import rayrank
from rayrank import loadtest
from rayrank.validate import NON_BLANK_PATTERN
from tests.serve.conftest import post, running, tiny_args

DOCS = ["ray cluster head node", "fish in the sea", "python data model", "the sun is a big light"]


@pytest.fixture(scope="module")
def engine(tiny_encoder):
    return rayrank.Reranker(str(tiny_encoder), scorer="late-interaction")


@pytest.fixture(scope="module")
def url(ray_cluster, tiny_encoder):
    # A long batch window so that concurrent requests meet in one batch; small limits to test them.
    args = tiny_args(tiny_encoder, "late-interaction", served_model_name="tiny",
                     batching={"max_batch_size": 8, "batch_wait_timeout_s": 0.3},
                     limits={"max_documents": 5, "max_document_chars": 1000, "max_body_bytes": 4096},
                     cache={"enabled": True, "threshold": 0.999})
    with running(args) as base:
        yield base


def stats(url: str) -> dict:
    return requests.get(url + "/healthz", timeout=30).json()["stats"]


def test_cohere_rerank_ranks_with_engine_scores(url, engine):
    body = post(url, "/v1/rerank", {"query": "what is a ray cluster", "documents": DOCS[:2] + [{"text": DOCS[2]}],
                                    "model": "tiny"}).json()
    raw = engine.score("what is a ray cluster", DOCS[:3])
    expected = engine.relevance(["what is a ray cluster"] * 3, raw)
    scores = [r["relevance_score"] for r in body["results"]]
    assert all(0 <= s <= 1 for s in scores)
    assert [r["index"] for r in body["results"]] == np.argsort(-expected, kind="stable").tolist()
    np.testing.assert_allclose(scores, np.sort(expected)[::-1], rtol=1e-4)
    assert "document" not in body["results"][0] and body["meta"]["model"] == "tiny" and body["id"]


def test_cohere_top_n_and_return_documents(url):
    body = post(url, "/v1/rerank", {"query": "sea fish", "documents": DOCS, "top_n": 2,
                                    "return_documents": True}).json()
    assert len(body["results"]) == 2
    assert all(r["document"] == {"text": DOCS[r["index"]]} for r in body["results"])


def test_tei_rerank(url, engine):
    body = post(url, "/rerank", {"query": "python", "texts": DOCS, "return_text": True, "raw_scores": True}).json()
    expected = engine.score("python", DOCS)
    assert [r["index"] for r in body] == np.argsort(-expected, kind="stable").tolist()
    np.testing.assert_allclose([r["score"] for r in body], np.sort(expected)[::-1], rtol=1e-4)
    assert [r["text"] for r in body] == [DOCS[r["index"]] for r in body]


def test_models_health_and_docs(url):
    assert requests.get(url + "/v1/models", timeout=30).json()["data"][0]["id"] == "tiny"
    assert requests.get(url + "/healthz", timeout=30).json()["status"] == "ok"
    spec = requests.get(url + "/openapi.json", timeout=30).json()
    assert {"/v1/rerank", "/rerank", "/v1/models", "/healthz"} <= set(spec["paths"])
    assert requests.get(url + "/docs", timeout=30).status_code == 200


def test_concurrent_requests_share_an_engine_call_and_get_their_own_scores(url, engine):
    queries = [f"{w} query" for w in ("ray", "fish", "data", "sun", "model", "rank")]
    before = stats(url)
    with ThreadPoolExecutor(len(queries)) as pool:
        bodies = list(pool.map(lambda q: post(url, "/v1/rerank", {"query": q, "documents": DOCS}).json(), queries))
    after = stats(url)
    for query, body in zip(queries, bodies):
        by_index = {r["index"]: r["relevance_score"] for r in body["results"]}
        expected = engine.relevance([query] * len(DOCS), engine.score(query, DOCS))
        np.testing.assert_allclose([by_index[i] for i in range(len(DOCS))], expected, rtol=1e-4)
    assert after["requests"] - before["requests"] == len(queries)
    assert after["batches"] - before["batches"] < len(queries)  # at least two requests met in one batch
    assert after["pairs_scored"] - before["pairs_scored"] == len(queries) * len(DOCS)


def test_semantic_cache_hits_same_and_near_duplicate_queries_over_the_same_documents(url):
    first = post(url, "/v1/rerank", {"query": "big light sun", "documents": DOCS}).json()
    before = stats(url)
    # The same words differently cased and spaced tokenize identically (cosine 1): a near-duplicate.
    near = post(url, "/v1/rerank", {"query": "Big  LIGHT sun", "documents": DOCS}).json()
    shuffled = post(url, "/v1/rerank", {"query": "big light sun", "documents": DOCS[::-1]}).json()
    other_docs = post(url, "/v1/rerank", {"query": "big light sun", "documents": DOCS[:3]}).json()
    other_query = post(url, "/v1/rerank", {"query": "python data", "documents": DOCS}).json()
    after = stats(url)
    assert not first["meta"]["cached"]
    assert near["meta"]["cached"] and near["results"] == first["results"]
    assert shuffled["meta"]["cached"]
    assert [DOCS[::-1][r["index"]] for r in shuffled["results"]] == [DOCS[r["index"]] for r in first["results"]]
    assert not other_docs["meta"]["cached"] and not other_query["meta"]["cached"]
    assert after["cache_hits"] - before["cache_hits"] == 2
    assert after["cache_misses"] - before["cache_misses"] == 2
    assert after["pairs_scored"] - before["pairs_scored"] == 3 + len(DOCS)


# --- bad requests: one per kind, each a 4xx JSON error naming the field ---------------------------------

@pytest.mark.parametrize(("payload", "status", "field", "says"), [
    ({"documents": DOCS}, 422, "query", "required"),
    ({"query": "", "documents": DOCS}, 422, "query", "empty"),
    ({"query": "q", "documents": []}, 422, "documents", "at least 1"),
    ({"query": "q", "documents": DOCS + DOCS}, 422, "documents", "at most 5"),
    ({"query": "q", "documents": ["ok", "x" * 1001]}, 422, "documents[1]", "at most 1000"),
    ({"query": "q", "documents": ["ok", None]}, 422, "documents", "index 1 is null"),
    ({"query": "q", "documents": ["ok", 7]}, 422, "documents", "index 1 is int"),
    ({"query": ["q"], "documents": DOCS}, 422, "query", "valid string"),
    ({"query": "q", "documents": "one string"}, 422, "documents", "valid list"),
    ({"query": "q", "documents": DOCS, "top_n": 0}, 422, "top_n", "greater than or equal to 1"),
    ({"query": "q", "documents": DOCS, "top_n": -3}, 422, "top_n", "greater than or equal to 1"),
    ({"query": "q", "documents": DOCS, "model": "rerank-v3.5"}, 422, "model", "not served"),
    ({"query": "q", "documents": DOCS, "colour": 1}, 422, "colour", "not permitted"),
    ({"query": "q", "documents": ["ok", {"id": "d1"}]}, 422, "documents[1]", "loads none"),
    ({"query": "q", "documents": ["ok", {"id": 3}]}, 422, "documents", "id must be a non-empty string"),
], ids=["missing-query", "empty-query", "empty-documents", "too-many-documents", "document-too-long",
        "null-document", "number-document", "query-wrong-type", "documents-wrong-type", "top-n-zero",
        "top-n-negative", "unknown-model", "unknown-key", "id-without-index", "id-not-a-string"])
def test_bad_request_is_a_4xx_naming_the_field(url, payload, status, field, says):
    response = post(url, "/v1/rerank", payload)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field and says in error["message"], error


def test_tei_errors_name_its_fields(url):
    error = post(url, "/rerank", {"query": "q", "texts": []}).json()["error"]
    assert error["field"] == "texts"
    error = post(url, "/rerank", {"query": "q", "texts": ["a"] * 6}).json()["error"]
    assert error["field"] == "texts" and "at most 5" in error["message"]


def test_invalid_json_is_400(url):
    response = requests.post(url + "/v1/rerank", data=b'{"query": "q", "documents": [', timeout=30,
                             headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["field"] == "body"


def test_non_object_body_is_422(url):
    response = post(url, "/v1/rerank", ["query", "documents"])
    assert response.status_code == 422 and response.json()["error"]["field"] == "body"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_body_is_413(url, chunked):
    body = b'{"query": "q", "documents": ["' + b"x" * 5000 + b'"]}'
    data = iter([body[:2000], body[2000:]]) if chunked else body  # a generator makes requests stream it
    response = requests.post(url + "/v1/rerank", data=data, headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["field"] == "body"
    assert post(url, "/v1/rerank", {"query": "q", "documents": DOCS}).status_code == 200


def test_rejections_are_counted(url):
    before = stats(url)
    post(url, "/v1/rerank", {"query": "q", "documents": []})
    assert stats(url).get("rejected_invalid_request", 0) == before.get("rejected_invalid_request", 0) + 1


def test_loadtest_open_loop_against_the_app(url, tmp_path, capsys):
    code = loadtest.main([url, "--qps", "4,8", "--duration", "1", "--docs", "3", "--simulate",
                          "--calibration-requests", "3", "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| qps | sent | ok | errors |" in printed and "sim_p99" in printed
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0].startswith("qps,sent,ok,errors,achieved_qps,p50,p95,p99,p99.9,max,sim_p50")
    assert len(rows) == 3 and (tmp_path / "latency.png").stat().st_size > 0


# --- white space: refused as empty on every route, the same rule as the engine and the OpenAPI pattern --------

BLANKS = ["\u001e", " \t\n", "\u00a0", "\u2028"]
ROUTES = [("/v1/rerank", "documents"), ("/v2/rerank", "documents"), ("/rerank", "texts")]


@pytest.mark.parametrize("blank", BLANKS, ids=["record-separator", "space-tab-newline", "no-break-space",
                                               "line-separator"])
@pytest.mark.parametrize(("route", "field"), ROUTES, ids=["cohere-v1", "cohere-v2", "tei"])
def test_white_space_only_text_is_refused_on_every_route(url, route, field, blank):
    response = post(url, route, {"query": blank, field: ["ok"]})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "query"
    assert "only white space" in response.json()["error"]["message"]
    response = post(url, route, {"query": "q", field: ["ok", blank]})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and "index 1 is only white space" in error["message"], error


@pytest.mark.parametrize(("route", "field"), ROUTES, ids=["cohere-v1", "cohere-v2", "tei"])
def test_text_around_white_space_and_control_characters_is_scored(url, route, field):
    response = post(url, route, {"query": "\u2028sea\u00a0fish", field: ["\u001efish\t", "\u0001"]})
    assert response.status_code == 200, response.text


def test_the_schema_pattern_is_the_engine_rule(url):
    doc = requests.get(url + "/openapi.json", timeout=30).json()
    models = doc["components"]["schemas"]
    for name, field in [("CohereRerankRequest", "documents"), ("CohereV2RerankRequest", "documents"),
                        ("TeiRerankRequest", "texts")]:
        query = models[name]["properties"]["query"]
        assert query["pattern"] == NON_BLANK_PATTERN and query["minLength"] == 1
        items = models[name]["properties"][field]["items"]
        texts = [items] if "anyOf" not in items else [items["anyOf"][0], items["anyOf"][1]["properties"]["text"]]
        assert all(t["pattern"] == NON_BLANK_PATTERN for t in texts)
