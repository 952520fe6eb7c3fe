"""API keys over real HTTP: every route but liveness needs `Authorization: Bearer KEY`.

The replica reads its keys from the environment variable `auth.api_keys_env`, inherited from the
process environment as the RayService's containers get it from a Secret (tests/serve/conftest.py sets
it before Ray starts); two keys, so rotation works.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.serve.conftest import API_KEYS as KEYS
from tests.serve.conftest import post, running, tiny_args

DOCS = ["ray cluster head node", "fish in the sea"]


@pytest.fixture(scope="module")
def url(ray_cluster, tiny_encoder):
    args = tiny_args(tiny_encoder, "late-interaction", auth={"api_keys_env": "RAYRANK_TEST_KEYS"})
    with running(args) as base:
        yield base


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("key", KEYS)
def test_each_key_is_accepted(url, key):
    response = post(url, "/v1/rerank", {"query": "ray", "documents": DOCS}, headers=bearer(key))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("headers, challenge", [
    ({}, 'Bearer realm="rayrank"'),
    (bearer("key-one-3f9"), 'Bearer realm="rayrank", error="invalid_token"'),
    (bearer(KEYS[0] + "x"), 'Bearer realm="rayrank", error="invalid_token"'),
    ({"Authorization": KEYS[0]}, 'Bearer realm="rayrank", error="invalid_token"'),
], ids=["missing", "prefix-of-a-key", "longer-than-a-key", "no-bearer-scheme"])
def test_missing_or_wrong_key_is_401_with_a_challenge(url, headers, challenge):
    for path in ("/v1/rerank", "/rerank"):
        response = requests.post(url + path, json={"query": "ray", "documents": DOCS, "texts": DOCS},
                                 headers=headers, timeout=30)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == challenge
        assert response.json()["error"]["type"] == "unauthorized"
    for path in ("/v1/models", "/openapi.json", "/health"):
        assert requests.get(url + path, headers=headers, timeout=30).status_code == 401


def test_liveness_needs_no_key_and_refusals_are_counted(url):
    before = requests.get(url + "/healthz", timeout=30)
    assert before.status_code == 200
    requests.get(url + "/v1/models", timeout=30)
    after = requests.get(url + "/healthz", timeout=30).json()["stats"]
    assert after["rejected_unauthorized"] == before.json()["stats"].get("rejected_unauthorized", 0) + 1


def test_the_openapi_document_declares_the_bearer_scheme(url):
    doc = requests.get(url + "/openapi.json", headers=bearer(KEYS[1]), timeout=30).json()
    assert doc["components"]["securitySchemes"] == {"apiKey": {"type": "http", "scheme": "bearer"}}
    assert doc["paths"]["/v1/rerank"]["post"]["security"] == [{"apiKey": []}]
    assert "401" in doc["paths"]["/v1/rerank"]["post"]["responses"]
    assert "security" not in doc["paths"]["/healthz"]["get"]


def test_no_key_appears_in_any_log(url):
    import ray

    post(url, "/v1/rerank", {"query": "ray", "documents": DOCS}, headers=bearer(KEYS[0]))
    post(url, "/v1/rerank", {"query": "ray", "documents": DOCS}, headers=bearer("wrong-key-value"))
    session = Path(ray._private.worker._global_node.get_session_dir_path())  # Ray's, Serve's and replicas' logs
    texts = [p.read_text(errors="replace") for p in (session / "logs").rglob("*") if p.is_file()]
    assert len(texts) > 5 and not any(k in t for t in texts for k in (*KEYS, "wrong-key-value"))


def test_the_rayservice_reads_the_key_from_a_secret_and_probes_health():
    import yaml

    service = yaml.safe_load((Path(__file__).resolve().parents[2] / "cluster/kubernetes/rayservice.yaml").read_text())
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    variable = config["applications"][0]["args"]["auth"]["api_keys_env"]
    cluster = service["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for pod in pods:
        (container,) = pod["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        assert env[variable]["valueFrom"]["secretKeyRef"]["key"] == variable
    (worker,) = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"]
    assert worker["readinessProbe"]["exec"]["command"][-1].endswith("/health")
    assert "Authorization: Bearer" in worker["readinessProbe"]["exec"]["command"][-1]
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
