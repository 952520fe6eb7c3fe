"""`rayrank serve`: config validation naming the key, and a real run joined to the session's Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from rayrank.errors import ConfigError
from rayrank.ray_app.cli import load_plan
from tests.serve.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "configs" / "serve.local.yaml"


def write_config(tmp_path: Path, edit) -> Path:
    config = yaml.safe_load(LOCAL.read_text())
    edit(config)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_local_config_validates():
    plan = load_plan(LOCAL)
    (_, args, options), = plan.apps
    assert args.engine.scorer == "late-interaction" and args.engine.model_name.endswith("all-MiniLM-L6-v2")
    assert options["autoscaling_config"]["max_replicas"] >= options["autoscaling_config"]["min_replicas"]
    assert options["max_queued_requests"] > 0 and options["backpressure_config"]["retry_after_s"] > 0


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


def test_rayrank_serve_runs_joined_to_a_cluster_and_stops_on_sigint(ray_cluster, tiny_encoder, tmp_path):
    def tiny(config):
        app = config["applications"][0]
        app["args"]["engine"]["model"] = str(tiny_encoder)
        app["deployments"][0]["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 1}
        app["deployments"][0]["ray_actor_options"] = {"num_cpus": 0}

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rayrank.cli", "serve", "--config", str(write_config(tmp_path, tiny)),
                             "--address", ray_cluster, "--port", str(port)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = proc.stdout.readline()  # printed once the application is running
        assert line.startswith(f"rayrank serving at http://127.0.0.1:{port}/"), line
        body = requests.post(f"http://127.0.0.1:{port}/v1/rerank", json={"query": "ray", "documents": ["a", "b"]},
                             timeout=60).json()
        assert len(body["results"]) == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
