"""Shared fixtures: offline Hugging Face, tiny random models, one small Ray cluster per session, a moto S3 server."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A library's log handler created while an earlier test captured stderr keeps that (later closed) stream;
# its records are lost either way, but by default each one also prints a "--- Logging error ---"
# traceback into whatever test runs then, breaking assertions on that test's own stderr.
logging.raiseExceptions = False

from tests.tiny_models import make_cross_encoder, make_encoder  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """One ONNX export cache for the session, so each tiny model is exported once."""
    path = tmp_path_factory.mktemp("onnx-cache")
    os.environ["RAYRANK_CACHE"] = str(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory) -> Path:
    return make_cross_encoder(tmp_path_factory.mktemp("tiny-ce"))


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    return make_encoder(tmp_path_factory.mktemp("tiny-enc"))


@pytest.fixture(scope="session")
def tiny_colbert(tmp_path_factory) -> Path:
    return make_encoder(tmp_path_factory.mktemp("tiny-colbert"), colbert=True)


@pytest.fixture(scope="session")
def ray_cluster():
    """One small local Ray cluster for the whole session; jobs and Serve apps in tests join it.

    Yields the cluster's GCS address so subprocesses (e.g. a job killed with SIGKILL) can join too.
    """
    import ray

    ray.init(num_cpus=2, object_store_memory=300 * 1024**2, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


class MotoServer:
    """A moto S3 server on a fixed 127.0.0.1 port that a test can stop and start again; the buckets live
    in this process's moto backend, so they survive a restart."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = None
        self.start()

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port)
        self._server.start()

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture
def moto_server(monkeypatch):
    server = MotoServer()
    # The job reads the endpoint and credentials from the standard AWS variables.
    for key, value in {"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    yield server
    server.stop()
