"""A decoder reranker behind the Serve routes: per-request instructions reach the prompt, and the OpenAPI
document states the field where the served model reads it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from rayrank.ray_app.config import ServeArgs

import rayrank
from tests.serve.conftest import post, running
from tests.tiny_decoders import make_qwen3

DOCS = ["ray cluster head node", "fish in the sea", "python data model", "the sun is a big light"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_qwen3(tmp_path_factory.mktemp("serve-qwen3"))


@pytest.fixture(scope="module")
def url(ray_cluster, model):
    args = ServeArgs.model_validate({"engine": {"model": str(model), "scorer": "cross-encoder", "backend": "torch"},
                                     "served_model_name": "tiny-qwen3", "limits": {"max_query_chars": 100}})
    with running(args) as base:
        yield base


def test_each_request_is_scored_under_its_own_instruction(url, model):
    engine = rayrank.Reranker(str(model), backend="torch")
    instructions = [None, "Find fish", None, "Find code"]

    def raw(instruction):
        body = {"query": "what is in the sea", "texts": DOCS, "raw_scores": True}
        response = post(url, "/rerank", body if instruction is None else {**body, "instruction": instruction})
        assert response.status_code == 200, response.text
        return np.array([r["score"] for r in sorted(response.json(), key=lambda r: r["index"])], dtype=np.float32)

    with ThreadPoolExecutor(4) as pool:  # concurrent requests may share a batch: each keeps its instruction
        got = list(pool.map(raw, instructions))
    for scores, instruction in zip(got, instructions):
        want = engine.score("what is in the sea", DOCS, instruction=instruction)
        np.testing.assert_allclose(scores, want, atol=1e-5, rtol=0)
    assert np.abs(got[1] - got[0]).max() > 1e-2
    v2 = post(url, "/v2/rerank", {"query": "what is in the sea", "documents": DOCS, "instruction": "Find fish"})
    assert v2.status_code == 200 and {r["index"] for r in v2.json()["results"]} == set(range(4))


def test_the_schema_states_the_instruction_and_blank_or_long_ones_are_refused(url):
    doc = requests.get(url + "/openapi.json", timeout=30).json()
    field = doc["components"]["schemas"]["CohereV2RerankRequest"]["properties"]["instruction"]
    assert field["anyOf"][0]["maxLength"] == 100 and field["anyOf"][1] == {"type": "null"}
    for instruction, message in [(" \t", "instruction is only white space"), ("x" * 101, "at most 100")]:
        response = post(url, "/v1/rerank", {"query": "q", "documents": ["d"], "instruction": instruction})
        assert response.status_code == 422 and response.json()["error"]["field"] == "instruction", response.text
        assert message in response.json()["error"]["message"]
