"""Readiness and autoscaling over real HTTP.

A replica scores its warm-up batch before `/health` says ready (503 before; `/healthz`, liveness,
answers throughout; a request sent meanwhile waits and is served, one sent after it is refused). An app
with min 1 / max 2 replicas and short delays gets a second replica under load — seen in the
`X-Rayrank-Replica` header and in `rayrank loadtest`'s replica columns — and goes back to one after
the load stops.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from rayrank import loadtest
from tests.serve.conftest import post, running, tiny_args

DOCS = ["ray cluster head node", "fish in the sea", "python data model"]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_health_is_503_until_the_warm_up_batch_is_scored(ray_cluster, tiny_encoder):
    # A warm-up batch big enough to take seconds with the tiny model.
    args = tiny_args(tiny_encoder, "late-interaction", warmup={"pairs": 30000, "document_words": 60})
    with running(args) as url:
        early = requests.get(url + "/health", timeout=30)
        assert early.status_code == 503 and early.json()["status"] == "warming_up"
        assert early.headers["Retry-After"] == "1"
        live = requests.get(url + "/healthz", timeout=30)
        assert live.status_code == 200 and live.json()["ready"] is False
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, url, "/v1/rerank", {"query": "ray", "documents": DOCS})  # waits for the warm-up
            wait_for(lambda: requests.get(url + "/healthz", timeout=30).json()["stats"]["pending_pairs"], 30,
                     "the first request to queue")
            # No rate measured yet: one request may wait for the warm-up, the next is refused.
            second = post(url, "/v1/rerank", {"query": "ray", "documents": DOCS})
            unread = requests.post(url + "/v2/rerank", data=b"{not json", timeout=60)  # refused before parsing
            answer = first.result()
        assert unread.status_code == 429 and unread.json()["error"]["type"] == "overloaded"
        assert second.status_code == 429 and second.headers["Retry-After"] == "1"
        assert "still warming up" in second.json()["error"]["message"], second.text
        assert answer.status_code == 200
        ready = requests.get(url + "/health", timeout=30)
        assert ready.status_code == 200 and ready.json() == {"status": "ready", "replica": answer.headers[
            "X-Rayrank-Replica"]}
        assert requests.get(url + "/healthz", timeout=30).json()["pairs_per_s"] > 0


def replicas(app: str = "rayrank") -> int:
    from ray import serve

    status = serve.status().applications[app].deployments["Reranker"]
    return status.replica_states.get("RUNNING", 0)


def test_autoscaling_adds_a_replica_under_load_and_removes_it_after(ray_cluster, tiny_encoder, tmp_path, capsys):
    args = tiny_args(tiny_encoder, "late-interaction", batching={"max_batch_size": 1})
    scaling = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "upscale_delay_s": 0.5,
               "downscale_delay_s": 2, "metrics_interval_s": 0.25, "look_back_period_s": 1}
    with running(args, autoscaling_config=scaling, max_ongoing_requests=4,
                 ray_actor_options={"num_cpus": 0}) as url:
        assert replicas() == 1
        seen: set[str] = set()
        stop = threading.Event()
        long_docs = [" ".join(["ray cluster python data model"] * 12)] * 64

        def client(i: int) -> None:
            while not stop.is_set():
                response = post(url, "/v1/rerank", {"query": f"ray {i}", "documents": long_docs})
                assert response.status_code in (200, 429), response.text
                seen.add(response.headers["X-Rayrank-Replica"])

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(client, i) for i in range(8)]
            try:
                wait_for(lambda: len(seen) >= 2, 90, "requests answered by a second replica")
                # rayrank loadtest sees both replicas too, while they run
                assert loadtest.main([url, "--qps", "8", "--duration", "2", "--docs", "3", "--out",
                                      str(tmp_path)]) == 0
            finally:
                stop.set()
            for future in futures:
                future.result()
        assert replicas() == 2
        printed = capsys.readouterr().out
        assert "| replicas | replicas_per_5s |" in printed
        row = (tmp_path / "results.csv").read_text().splitlines()
        header, values = row[0].split(","), row[1].split(",")
        assert int(values[header.index("replicas")]) >= 1
        wait_for(lambda: replicas() == 1, 90, "the deployment to scale back to one replica")
        answered = {post(url, "/v1/rerank", {"query": "ray", "documents": DOCS}).headers["X-Rayrank-Replica"]
                    for _ in range(6)}
        assert len(answered) == 1
