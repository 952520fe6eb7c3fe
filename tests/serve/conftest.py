"""Serve apps on the session's Ray, reached over real HTTP on 127.0.0.1 at a free port."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import requests

from rayrank.ray_app.config import ServeArgs

# API keys the auth tests' replicas read (`auth.api_keys_env`). Set before the session's Ray starts,
# so workers inherit them as a container inherits a Secret: Ray's runtime_env agent would log them.
API_KEYS = ("key-one-3f9a", "key-two-77c1")
os.environ["RAYRANK_TEST_KEYS"] = ",".join(API_KEYS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running(args: ServeArgs, **deployment_options) -> Iterator[str]:
    """Run the app (with optional deployment options for "Reranker") and yield its base URL; shut Serve down after."""
    from ray import serve

    from rayrank.ray_app.app import RerankDeployment

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(RerankDeployment.options(**deployment_options).bind(args), name="rayrank", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def tiny_args(model, scorer: str, **settings) -> ServeArgs:
    return ServeArgs.model_validate({"engine": {"model": str(model), "scorer": scorer}, **settings})


def post(url: str, path: str, payload=None, **kwargs) -> requests.Response:
    return requests.post(url + path, json=payload, timeout=60, **kwargs)
