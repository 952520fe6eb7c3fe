"""Local and s3:// storage through fsspec, with writes that never expose a partial file.

Every file a job publishes appears whole or not at all: on disk it is written under a temporary name
and renamed (atomic); an object store's PUT is atomic by itself, so there it is one request.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from rayrank.errors import InputNotFoundError, StorageError

T = TypeVar("T")


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
    """Parquet files of a file, a directory (recursively) or a glob; `_`/`.`-prefixed names are skipped.

    A folder whose `_manifest.json` names its `files` (a rerank output, a partition published on an object
    store) gives exactly those: while a partition is republished its folder holds old and new files for a
    moment, and the manifest is the switch between them.
    """
    # s3fs keeps listings (with ETags) per process: a file replaced since a job in this process listed it
    # (a scheduler that reruns a partition) would be opened by its old ETag and refused.
    fs.invalidate_cache()
    if any(ch in path for ch in "*?["):
        found = fs.glob(path)
        manifests = {p.rsplit("/", 1)[0] for p in found}  # not in a glob's listing: look in each folder
    elif fs.isdir(path):
        found = fs.find(path)
        manifests = {p.rsplit("/", 1)[0] for p in found if p.endswith("/_manifest.json")}
    elif fs.exists(path):
        found, manifests = [path], set()
    else:
        raise InputNotFoundError(f"input {path} does not exist; check the path (local, or s3://BUCKET/...)")
    named = {folder: set(names) for folder in manifests if (names := manifest_files(fs, folder)) is not None}

    def listed(p: str) -> bool:
        folder, _, name = p.rpartition("/")
        return name in named.get(folder, (name,))

    files = sorted(p for p in found if p.endswith(".parquet") and listed(p)
                   and not any(part.startswith(("_", ".")) for part in p[len(path.split("*")[0]):].split("/")))
    if not files:
        raise InputNotFoundError(f"input {path} holds no .parquet files; name a Parquet file, a directory of them "
                                 "or a glob")
    return files


def manifest_files(fs: AbstractFileSystem, folder: str) -> list[str] | None:
    """The file names a folder's `_manifest.json` lists as its content (`files`), or None where it lists none."""
    names = (read_json(fs, f"{folder}/_manifest.json") or {}).get("files")
    return names if isinstance(names, list) and all(isinstance(n, str) for n in names) else None


def _tmp_name(path: str) -> str:
    """A hidden sibling name: Parquet readers (pyarrow, Ray) skip `.`-prefixed files."""
    folder, name = path.rsplit("/", 1)
    return f"{folder}/.{name}.tmp-{uuid.uuid4().hex[:8]}"


def is_object_store(fs: AbstractFileSystem) -> bool:
    """Whether `fs` is an object store, where an uploaded object appears whole or not at all."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return any(p in ("s3", "s3a", "gs", "gcs", "az", "abfs") for p in protocols)


def put_atomic(data: bytes, fs: AbstractFileSystem, path: str) -> None:
    """Publish `data` at `path` whole: one PUT on an object store, a temporary file and a rename on disk."""
    if is_object_store(fs):
        fs.pipe_file(path, data)  # no temporary + copy + delete: three requests saved
        return
    tmp = _tmp_name(path)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(tmp, data)
    fs.mv(tmp, path)


def write_parquet_atomic(table: pa.Table, fs: AbstractFileSystem, path: str) -> None:
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    put_atomic(buffer.getvalue().to_pybytes(), fs, path)


def write_json_atomic(data: dict[str, Any], fs: AbstractFileSystem, path: str) -> None:
    put_atomic(json.dumps(data, indent=2, default=str).encode(), fs, path)


def read_json(fs: AbstractFileSystem, path: str) -> dict[str, Any] | None:
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as handle:
        return json.load(handle)


def retrying(what: str, call: Callable[[], T], attempts: int = 4, first_wait_s: float = 1.0) -> T:
    """`call()`, retried with doubling waits (1 + 2 + 4 s by default) on storage errors.

    s3fs and botocore already retry each request for a second or two; this rides out an endpoint
    that is down for several seconds (a restarted gateway, a throttled bucket). What still fails is
    a StorageError naming `what`, so the job's error says which operation on which path failed.
    """
    for attempt in range(attempts):
        try:
            return call()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
            raise  # answers from the store, not faults of it
        except Exception as exc:  # s3fs/aiobotocore raise OSError, ClientError, connection errors, ...
            if attempt == attempts - 1:
                raise StorageError(f"storage operation failed after {attempts} attempts: {what}: "
                                   f"{type(exc).__name__}: {exc}") from exc
            time.sleep(first_wait_s * 2 ** attempt)
    raise AssertionError("unreachable")


def count_requests(*filesystems: AbstractFileSystem) -> Callable[[], int]:
    """A function returning how many HTTP requests `filesystems` have sent from this process (retries included).

    Counts with a botocore hook on s3fs's client, so every GET/PUT/HEAD/LIST/COPY/DELETE counts once
    per attempt; a local filesystem sends none. fsspec caches filesystems per process, so the hook is
    installed once per instance (one passed twice counts once) and the count is the process's total:
    callers take differences.
    """
    counters = [_counter(fs) for fs in {id(fs): fs for fs in filesystems}.values()]
    return lambda: sum(counter[0] for counter in counters)


def _counter(fs: AbstractFileSystem) -> list[int]:
    counter = getattr(fs, "_rayrank_requests", None)
    if counter is None:
        counter = [0]
        if is_object_store(fs) and hasattr(fs, "s3"):
            fs.connect()

            def count(**_: Any) -> None:  # returning None lets the request go ahead
                counter[0] += 1

            fs.s3.meta.events.register("before-send.s3", count)
        fs._rayrank_requests = counter
    return counter