"""`rayrank serve`: config validation naming the key, and real runs joined to the session's Ray — one with
the packaged default config from a directory that is not the repository."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from rayrank.errors import ConfigError
from rayrank.ray_app.cli import DEFAULT_CONFIG as LOCAL
from rayrank.ray_app.cli import load_plan
from tests.serve.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, edit) -> Path:
    config = yaml.safe_load(LOCAL.read_text())
    edit(config)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_default_config_validates_and_is_shown(capsys):
    from rayrank.ray_app.cli import main

    assert main(["--show-config"]) == 0 and capsys.readouterr().out == LOCAL.read_text()
    plan = load_plan(LOCAL)
    (_, args, options), = plan.apps
    assert args.engine.scorer == "late-interaction" and args.engine.model_name.endswith("all-MiniLM-L6-v2")
    assert options["autoscaling_config"]["max_replicas"] >= options["autoscaling_config"]["min_replicas"]
    assert options["max_queued_requests"] > 0 and options["backpressure_config"]["retry_after_s"] > 0
    assert options["backpressure_config"]["status_code"] == 429  # as the replica's own refusal


@pytest.mark.parametrize(("edit", "says"), [
    (lambda c: c["applications"][0]["args"]["batching"].update(max_batch_sise=4), "batching.max_batch_sise: unknown key"),
    (lambda c: c["applications"][0]["args"]["limits"].update(max_documents=0), "limits.max_documents"),
    (lambda c: c["applications"][0]["deployments"][0].update(max_ongoing_request=4), "max_ongoing_request"),
    (lambda c: c["applications"][0]["deployments"][0].update(name="Other"), "'Other'"),
    (lambda c: c["applications"][0].update(import_path="x.y:z"), "import_path"),
], ids=["args-typo", "args-range", "deployment-typo", "deployment-name", "import-path"])
def test_bad_config_names_the_key(tmp_path, edit, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace("[", r"\[")):
        load_plan(write_config(tmp_path, edit))


def serve(args: list[str], cwd: Path, port: int) -> subprocess.Popen:
    """`rayrank serve ARGS` as a user runs it (the installed package, not this checkout's path)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([sys.executable, "-m", "rayrank", "serve", *args, "--port", str(port)], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    line = proc.stdout.readline()  # printed once the application is running
    assert line.startswith(f"rayrank serving at http://127.0.0.1:{port}/"), line
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0


def test_rayrank_serve_with_no_config_from_any_directory(ray_cluster, tmp_path):
    port = free_port()
    proc = serve(["--address", ray_cluster], cwd=tmp_path, port=port)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while requests.get(url + "/health", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "the default app never became ready"
            time.sleep(0.5)
        body = requests.post(url + "/v2/rerank", json={"query": "what is a ray head node?", "documents": [
            "Fish swim in the sea.", "The head node of a Ray cluster runs the GCS."]}, timeout=60).json()
        assert [r["index"] for r in body["results"]] == [1, 0]
    finally:
        stop(proc)


def test_rayrank_serve_runs_joined_to_a_cluster_and_stops_on_sigint(ray_cluster, tiny_encoder, tmp_path):
    def tiny(config):
        app = config["applications"][0]
        app["args"]["engine"]["model"] = str(tiny_encoder)
        app["deployments"][0]["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 1}
        app["deployments"][0]["ray_actor_options"] = {"num_cpus": 0}

    port = free_port()
    proc = serve(["--config", str(write_config(tmp_path, tiny)), "--address", ray_cluster], cwd=REPO, port=port)
    try:
        body = requests.post(f"http://127.0.0.1:{port}/v1/rerank", json={"query": "ray", "documents": ["a", "b"]},
                             timeout=60).json()
        assert len(body["results"]) == 2
    finally:
        stop(proc)


def write_search_config(tmp_path: Path, corpus: Path, reranker: Path) -> Path:
    """A Serve config running the search funnel (BM25 -> the tiny cross-encoder) on a tiny corpus."""
    stages = [{"kind": "bm25", "name": "bm25", "k": 20, "stemmer": "none"},
              {"kind": "rerank", "name": "rerank", "k": 5, "engine": {"model": str(reranker), "scorer": "cross-encoder"}}]
    config = {"proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": 8000},
              "applications": [{"name": "search", "route_prefix": "/",
                                "import_path": "rayrank.ray_app.search:build_search_app",
                                "args": {"funnel": {"corpus": {"path": str(corpus)}, "stages": stages},
                                         "deployments": {"bm25": {"num_cpus": 0}, "rerank": {"num_cpus": 0}},
                                         "ingress": {"num_cpus": 0}}}]}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_app_kinds_are_validated_by_their_own_args(tmp_path, tiny_cross_encoder):
    from tests.serve.test_search import write_corpus

    search = write_search_config(tmp_path, write_corpus(tmp_path / "corpus"), tiny_cross_encoder)
    (_, args, options), = load_plan(search, app="search").apps
    assert [s.name for s in args.funnel.stages] == ["bm25", "rerank"] and options == {}
    with pytest.raises(ConfigError, match=r"applications\[0\].import_path: rayrank serve --app rerank runs "):
        load_plan(search, app="rerank")
    with pytest.raises(ConfigError, match=r"applications\[0\].import_path: rayrank serve --app search runs "):
        load_plan(LOCAL, app="search")
    config = yaml.safe_load(search.read_text())
    config["applications"][0]["deployments"] = [{"name": "Search", "num_replicas": 2}]
    search.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"deployments: the search app takes each stage's"):
        load_plan(search)


def test_the_search_app_needs_a_config(capsys):
    from rayrank.ray_app.cli import main

    with pytest.raises(SystemExit):
        main(["--app", "search"])
    assert "--app search needs --config FILE" in capsys.readouterr().err


def test_rayrank_serve_runs_the_search_app(ray_cluster, tiny_cross_encoder, tmp_path):
    from tests.serve.test_search import write_corpus

    config = write_search_config(tmp_path, write_corpus(tmp_path / "corpus"), tiny_cross_encoder)
    port = free_port()
    proc = serve(["--app", "search", "--config", str(config), "--address", ray_cluster], cwd=tmp_path, port=port)
    try:
        body = requests.post(f"http://127.0.0.1:{port}/v1/search", json={"query": "ray cluster data", "top_n": 3},
                             timeout=60).json()
        assert len(body["results"]) == 3 and [s["name"] for s in body["meta"]["stages"]] == ["bm25", "rerank"]
    finally:
        stop(proc)
