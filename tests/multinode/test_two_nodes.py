"""A real two-node Ray cluster on this machine: a head and a worker started by `ray start` as
separate processes, each with one CPU, so the job's two actors land one per node. Then the worker
node is killed mid-job and the job must still finish with every row exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.ray.conftest import REPO, candidates, read_output, write_rows


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Loopback-only test cluster; token auth (Ray 2.60's default) is off for these throwaway nodes.
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def _ray_start(args: list[str]) -> int:
    """`ray start` one node in its own process group (returned) so the test can SIGKILL the node."""
    # `ray` of this interpreter (not whichever is first on PATH), so the nodes' workers import this checkout.
    ray = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]
    proc = subprocess.Popen([*ray, "start", "--disable-usage-stats", "--num-cpus=1", "--node-ip-address=127.0.0.1",
                             *args], start_new_session=True, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    return proc.pid


@pytest.fixture
def two_nodes():
    temp_dir = Path("/tmp") / f"rr-{os.getpid()}"  # short: Ray's socket paths have a length limit
    port = _free_port()
    groups = []
    try:
        groups.append(_ray_start(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}"]))
        groups.append(_ray_start([f"--address=127.0.0.1:{port}"]))
        yield f"127.0.0.1:{port}", groups[1]
    finally:
        for group in reversed(groups):
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _job(tmp_path: Path, address: str, tiny_encoder: Path, rows: int) -> tuple[list[str], list[dict]]:
    data = candidates(rows // 20, 20)
    write_rows(tmp_path / "in.parquet", data, row_group_size=25)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "engine": {"model": str(tiny_encoder), "scorer": "late-interaction"}, "shard_rows": 25,
        "cluster": {"address": address, "actors": "2,2", "cpus_per_actor": 1}}))
    return [str(tmp_path / "in.parquet"), str(tmp_path / "out"), "--config", str(config)], data


def _run(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rayrank.jobs.rerank", *args], cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _exactly_once(out: Path, data: list[dict]) -> None:
    table = read_output(out)
    pairs = list(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist()))
    assert len(pairs) == len(set(pairs)) == len(data)


def test_actors_on_both_nodes_and_worker_node_loss(tmp_path, two_nodes, tiny_encoder):
    address, worker = two_nodes
    # 80 shards: enough work that both actors are up and scoring before the pool drains it.
    args, data = _job(tmp_path / "a", address, tiny_encoder, rows=2000)
    proc = _run(args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    manifest = json.loads((tmp_path / "a" / "out" / "_manifest.json").read_text())
    assert manifest["cluster"]["nodes_used"] == 2 and "2 node(s) scored" in out
    _exactly_once(tmp_path / "a" / "out", data)

    args, data = _job(tmp_path / "b", address, tiny_encoder, rows=2000)
    proc = _run(args)
    markers = tmp_path / "b" / "out" / "_staging" / "done" / "shards"
    deadline = time.monotonic() + 240
    while True:  # kill the worker node once both nodes have committed shards
        nodes = {json.loads(p.read_text())["node"] for p in markers.glob("*.json")} if markers.exists() else set()
        if len(nodes) == 2:
            break
        assert proc.poll() is None and time.monotonic() < deadline, "job ended before both nodes scored"
        time.sleep(0.05)
    os.killpg(worker, signal.SIGKILL)
    committed_at_kill = len(list(markers.glob("*.json")))
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    assert committed_at_kill < 80, "the job had finished scoring before the node was killed"
    manifest = json.loads((tmp_path / "b" / "out" / "_manifest.json").read_text())
    assert len(manifest["cluster"]["nodes_lost"]) == 1 and "1 node(s) lost mid-job" in out
    _exactly_once(tmp_path / "b" / "out", data)
