"""The rerank job from s3:// to s3:// against a real S3 HTTP endpoint (moto server) on 127.0.0.1."""

from __future__ import annotations

import io
import socket

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrank.jobs.rerank import main
from tests.ray.conftest import candidates


@pytest.fixture
def s3_endpoint(monkeypatch):
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # The job reads the endpoint and credentials from the standard AWS variables.
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    yield endpoint
    server.stop()


def test_s3_to_s3(s3_endpoint, job_config):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="logs")
    rows = candidates(3, 5)
    for i, chunk in enumerate((rows[:7], rows[7:])):  # query q1 spans both objects
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(chunk), buffer)
        s3.put_object(Bucket="logs", Key=f"day=1/part{i}.parquet", Body=buffer.getvalue())

    assert main(["s3://logs/day=1/", "s3://logs/reranked/day=1", "--config", str(job_config())]) == 0

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="logs", Prefix="reranked/")["Contents"]]
    assert "reranked/day=1/_manifest.json" in keys
    assert not [k for k in keys if "_staging" in k or ".tmp-" in k]
    parts = [k for k in keys if k.rsplit("/", 1)[-1].startswith("part-")]
    table = pa.concat_tables(
        [pq.read_table(io.BytesIO(s3.get_object(Bucket="logs", Key=k)["Body"].read())) for k in parts])
    assert sorted(table["doc_id"].to_pylist()) == sorted(r["doc_id"] for r in rows)
    q1 = sorted(r for r, q in zip(table["rank"].to_pylist(), table["query_id"].to_pylist()) if q == "q1")
    assert q1 == [1, 2, 3, 4, 5]
