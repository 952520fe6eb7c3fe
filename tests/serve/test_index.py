"""Documents given by id: a Serve app loading an index built by the real index job, over real HTTP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

import rayrank
from rayrank.jobs.index import main as index_main
from rayrank.ray_app.config import ServeArgs
from tests.ray.conftest import write_rows
from tests.serve.conftest import post, running, tiny_args

CORPUS = {f"d{i}": text for i, text in enumerate([
    "ray cluster head node", "fish in the sea", "python data model", "the sun is a big light",
    "search and rank documents", "a cat and a dog", "query the data cluster", "light on the sea"])}


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, tiny_encoder, ray_cluster):
    root = tmp_path_factory.mktemp("serve-index")
    write_rows(root / "docs.parquet", [{"doc_id": d, "text": t} for d, t in CORPUS.items()])
    config = root / "index.yaml"
    config.write_text(json.dumps({"engine": {"model": str(tiny_encoder)},
                                  "cluster": {"address": ray_cluster, "actors": "1,1", "cpus_per_actor": 0.5}}))
    assert index_main([str(root / "docs.parquet"), str(root / "ix"), "--config", str(config)]) == 0
    return root / "ix"


@pytest.fixture(scope="module")
def url(index_dir, tiny_encoder):
    with running(tiny_args(tiny_encoder, "late-interaction", index=str(index_dir),
                           cache={"enabled": True, "threshold": 0.999})) as base:
        yield base


def test_documents_by_id_score_like_their_texts(url, tiny_encoder):
    ids = ["d3", "d0", "d6", "d1"]
    body = post(url, "/v1/rerank", {"query": "ray data cluster", "documents": [{"id": d} for d in ids],
                                    "return_documents": True}).json()
    engine = rayrank.Reranker(str(tiny_encoder), scorer="late-interaction")
    expected = engine.relevance(["ray data cluster"] * len(ids),
                                engine.score("ray data cluster", [CORPUS[d] for d in ids]))
    got = np.empty(len(ids), np.float32)
    for result in body["results"]:
        got[result["index"]] = result["relevance_score"]
        assert result["document"] == {"id": ids[result["index"]]}
    np.testing.assert_allclose(got, expected, atol=2e-3)  # the index stores float16 vectors
    assert [r["index"] for r in body["results"]] == list(np.argsort(-got, kind="stable"))


def test_ids_and_texts_mix_in_one_request_and_the_cache_tells_them_apart(url):
    payload = {"query": "fish sea", "documents": [{"id": "d1"}, "fish in the sea", {"text": "a cat"}],
               "return_documents": True}
    first = post(url, "/v1/rerank", payload).json()
    scores = {r["index"]: r["relevance_score"] for r in first["results"]}
    assert scores[0] == pytest.approx(scores[1], abs=2e-3)  # d1 is "fish in the sea"
    assert {r["index"]: r["document"] for r in first["results"]}[0] == {"id": "d1"}
    again = post(url, "/v1/rerank", payload).json()
    assert again["meta"]["cached"] and again["results"] == first["results"]
    other = post(url, "/v1/rerank", {**payload, "documents": [{"id": "d7"}, "fish in the sea", {"text": "a cat"}]})
    assert not other.json()["meta"]["cached"]  # same texts, another id: another document set


def test_unknown_id_is_a_422_naming_it(url):
    response = post(url, "/v1/rerank", {"query": "q", "documents": [{"id": "d0"}, {"id": "nope"}]})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "documents[1].id" and "'nope' is not in the index" in error["message"]


def test_tei_takes_texts_only(url):
    response = post(url, "/rerank", {"query": "q", "texts": [{"id": "d0"}]})
    assert response.status_code == 422 and response.json()["error"]["field"] == "texts"


def test_healthz_names_the_index(url, index_dir):
    assert requests.get(url + "/healthz", timeout=30).json()["index"] == {"url": str(index_dir), "documents": 8}


def test_an_index_needs_the_late_interaction_scorer(tiny_cross_encoder):
    with pytest.raises(ValueError, match="index: documents by id"):
        ServeArgs.model_validate({"engine": {"model": str(tiny_cross_encoder), "scorer": "cross-encoder"},
                                  "index": "/some/index"})


def test_a_deleted_id_is_refused_like_an_unknown_one_from_the_next_request(url, index_dir, tmp_path):
    """Last in this module: it deletes d2 from the shared index (a new generation the replica picks up)."""
    assert post(url, "/v1/rerank", {"query": "q", "documents": [{"id": "d2"}]}).status_code == 200
    (tmp_path / "ids.txt").write_text("d2\n")
    assert index_main(["delete", str(index_dir), str(tmp_path / "ids.txt")]) == 0
    response = post(url, "/v1/rerank", {"query": "q", "documents": [{"id": "d0"}, {"id": "d2"}]})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "documents[1].id" and "'d2' is not in the index (7 documents)" in error["message"]
    assert post(url, "/v1/rerank", {"query": "q", "documents": [{"id": "d0"}]}).status_code == 200
