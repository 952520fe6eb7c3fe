"""The live app's `/openapi.json` tells the truth: schemathesis (the property-based OpenAPI fuzzer) runs
every check against it in positive and negative mode — schema-valid requests accepted, invalid ones
refused, every status code and body documented, no 5xx — with API keys on, so 401 is exercised too."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import requests

from tests.serve.conftest import API_KEYS, running, tiny_args


@pytest.fixture(scope="module")
def url(ray_cluster, tiny_encoder):
    args = tiny_args(tiny_encoder, "late-interaction", served_model_name="tiny",
                     auth={"api_keys_env": "RAYRANK_TEST_KEYS"},
                     limits={"max_documents": 4, "max_document_chars": 200, "max_query_chars": 200})
    with running(args) as base:
        yield base


def test_the_schema_states_the_enforced_limits(url):
    doc = requests.get(url + "/openapi.json", headers={"Authorization": f"Bearer {API_KEYS[0]}"}, timeout=30).json()
    request = doc["components"]["schemas"]["CohereV2RerankRequest"]["properties"]
    assert request["query"]["minLength"] == 1 and request["query"]["maxLength"] == 200
    assert request["documents"]["maxItems"] == 4 and request["documents"]["items"]["maxLength"] == 200
    responses = doc["paths"]["/v2/rerank"]["post"]["responses"]
    assert {"200", "400", "401", "413", "422", "429"} <= set(responses)
    assert "Retry-After" in responses["429"]["headers"]


def test_schemathesis_finds_nothing(url):
    st = shutil.which("st") or shutil.which("schemathesis")
    assert st, "schemathesis is a test dependency (pip install -e .[test])"
    run = subprocess.run([st, "run", f"{url}/openapi.json", "--checks", "all", "--mode", "all",
                          "--max-examples", "30", "--seed", "1", "--header", f"Authorization: Bearer {API_KEYS[0]}",
                          "--no-color"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
