"""Shared fixtures: offline Hugging Face, tiny random models, and one small Ray cluster per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
