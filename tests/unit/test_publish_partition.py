"""Publishing a finished partition on S3 (moto over HTTP): readers that follow the manifest (export and
eval's `read_output_table`, a job's input listing `list_parquet`) see the old partition or the new one,
never a mix, whichever step a publish dies at; the next publish cleans up."""

from __future__ import annotations

import json

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrank.evaluate import read_output_table
from rayrank.io.storage import filesystem, list_parquet, storage_options
from rayrank.jobs.rerank import publish_partition

URL = "s3://nightly/out"


class Killed(BaseException):
    """The process dying at that step (a BaseException: no retry catches it)."""


@pytest.fixture
def store(moto_server):
    boto3.client("s3", endpoint_url=moto_server.endpoint).create_bucket(Bucket="nightly")
    fs, root = filesystem(URL, storage_options(None, URL))
    return fs, root


def finished_job(fs, work: str, night: str, files: int = 2) -> set[tuple[str, str]]:
    """A finished partition job's folder: part files, an errors file, staging leftovers and the manifest."""
    pairs = set()
    for n in range(files):
        table = pa.table({"query_id": [f"{night}q{n}"] * 2, "doc_id": ["a", "b"], "score": [0.5, 0.25],
                          "rank": [1, 2]})
        with fs.open(f"{work}/part-{n:05d}.parquet", "wb") as handle:
            pq.write_table(table, handle)
        pairs |= set(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist()))
    with fs.open(f"{work}/_errors/shard-0.parquet", "wb") as handle:
        pq.write_table(pa.table({"reason": [f"{night} bad row"]}), handle)
    fs.pipe_file(f"{work}/_staging/scores/0.parquet", b"staged")
    fs.pipe_file(f"{work}/_manifest.json", json.dumps({"job_id": night}).encode())
    return pairs


def read_pairs(target: str) -> set[tuple[str, str]]:
    table = read_output_table(f"s3://{target}", ["query_id", "doc_id"], storage_options(None, URL))
    return set(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist()))


def input_pairs(fs, path: str) -> set[tuple[str, str]]:
    """The pairs another job reading `path` as its INPUT would see."""
    pairs = set()
    for name in list_parquet(fs, path):
        with fs.open(name, "rb") as handle:
            table = pq.read_table(handle, columns=["query_id", "doc_id"])
        pairs |= set(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist()))
    return pairs


def objects(fs, target: str) -> list[str]:
    fs.invalidate_cache()
    return sorted(f[len(target) + 1:] for f in fs.find(target))


@pytest.mark.parametrize("dies_at", ["copy", "manifest", "cleanup"])
def test_a_publish_killed_at_any_step_leaves_the_old_or_the_new_partition_whole(store, monkeypatch, dies_at):
    fs, root = store
    target = f"{root}/dt=2026-12-06"
    old = finished_job(fs, f"{root}/_partitions/old", "old")
    publish_partition(fs, f"{root}/_partitions/old", target)
    assert read_pairs(target) == old
    published = objects(fs, target)
    assert "_manifest.json" in published and not [f for f in published if "_staging" in f]
    assert json.loads(fs.cat_file(f"{target}/_manifest.json"))["files"] == [f for f in published
                                                                            if f != "_manifest.json"]

    new = finished_job(fs, f"{root}/_partitions/new", "new", files=3)
    real_copy, real_pipe, real_rm = fs.copy, fs.pipe_file, fs.rm
    copies = []

    def copy(source, dest, **kwargs):
        copies.append(dest)
        if dies_at == "copy" and len(copies) == 2:
            raise Killed
        return real_copy(source, dest, **kwargs)

    def pipe(path, data, **kwargs):
        if dies_at == "manifest" and path.endswith("_manifest.json"):
            raise Killed
        return real_pipe(path, data, **kwargs)

    def rm(path, **kwargs):
        if dies_at == "cleanup":
            raise Killed
        return real_rm(path, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(Killed):
        patch.setattr(fs, "copy", copy)
        patch.setattr(fs, "pipe_file", pipe)
        patch.setattr(fs, "rm", rm)
        publish_partition(fs, f"{root}/_partitions/new", target)
    # The new files sit beside the old ones: the manifest alone says which are the partition.
    assert len(objects(fs, target)) > len(published)
    assert read_pairs(target) == input_pairs(fs, target) == (new if dies_at == "cleanup" else old)

    publish_partition(fs, f"{root}/_partitions/new", target)  # the rerun
    assert read_pairs(target) == input_pairs(fs, target) == new
    left = objects(fs, target)
    assert len(left) == 3 + 1 + 1  # parts, the errors file, the manifest: nothing of the old or the dead publish
    assert json.loads(fs.cat_file(f"{target}/_manifest.json"))["job_id"] == "new"


def test_a_partitioned_output_is_read_through_each_partitions_manifest(store):
    fs, root = store
    nights = {}
    for night in ("dt=2026-12-05", "dt=2026-12-06"):
        nights[night] = finished_job(fs, f"{root}/_partitions/{night}", night)
        publish_partition(fs, f"{root}/_partitions/{night}", f"{root}/{night}")
    fs.pipe_file(f"{root}/dt=2026-12-06/part-00000-deadbeef.parquet", b"a dead publish's half-copied file")
    both = nights["dt=2026-12-05"] | nights["dt=2026-12-06"]
    assert read_pairs(root) == input_pairs(fs, root) == input_pairs(fs, f"{root}/dt=*/*.parquet") == both
