"""Local and s3:// storage through fsspec, with writes that never expose a partial file.

Every file a job publishes is written under a temporary name and then renamed: a local rename is
atomic, and an S3 object appears only once its upload (or copy) completes.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem


def storage_options(configured: dict[str, Any] | None, url: str) -> dict[str, Any]:
    """s3fs options: the config's, else the standard AWS environment variables (endpoint included).

    Resolved on the driver and handed to actors, because Ray workers started before a variable was
    set (or on other nodes) do not see the driver's environment.
    """
    if not url.startswith("s3://"):
        return {}
    options = dict(configured or {})
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "endpoint_url" not in options and "client_kwargs" not in options:
        options["endpoint_url"] = endpoint
    for key, env in (("key", "AWS_ACCESS_KEY_ID"), ("secret", "AWS_SECRET_ACCESS_KEY"), ("token", "AWS_SESSION_TOKEN")):
        if env in os.environ and key not in options:
            options[key] = os.environ[env]
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region and "client_kwargs" not in options:
        options["client_kwargs"] = {"region_name": region}
    return options


def filesystem(url: str, options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """(filesystem, path without scheme) for a local path or an s3:// URL."""
    fs, path = fsspec.core.url_to_fs(url, **(options or {}))
    return fs, path


def join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts if p)


def list_parquet(fs: AbstractFileSystem, path: str) -> list[str]:
    """Parquet files of a file, a directory (recursively) or a glob; `_`/`.`-prefixed names are skipped."""
    if any(ch in path for ch in "*?["):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = fs.find(path)
    elif fs.exists(path):
        found = [path]
    else:
        raise FileNotFoundError(f"input {path} does not exist")
    files = sorted(p for p in found if p.endswith(".parquet")
                   and not any(part.startswith(("_", ".")) for part in p[len(path.split("*")[0]):].split("/")))
    if not files:
        raise FileNotFoundError(f"input {path} holds no .parquet files")
    return files


def _tmp_name(path: str) -> str:
    """A hidden sibling name: Parquet readers (pyarrow, Ray) skip `.`-prefixed files."""
    folder, name = path.rsplit("/", 1)
    return f"{folder}/.{name}.tmp-{uuid.uuid4().hex[:8]}"


def write_parquet_atomic(table: pa.Table, fs: AbstractFileSystem, path: str) -> None:
    tmp = _tmp_name(path)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(tmp, "wb") as handle:
        pq.write_table(table, handle, compression="zstd")
    fs.mv(tmp, path)


def write_json_atomic(data: dict[str, Any], fs: AbstractFileSystem, path: str) -> None:
    tmp = _tmp_name(path)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, default=str)
    fs.mv(tmp, path)


def read_json(fs: AbstractFileSystem, path: str) -> dict[str, Any] | None:
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as handle:
        return json.load(handle)
