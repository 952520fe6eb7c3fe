"""The rerank job from s3:// to s3:// against a real S3 HTTP endpoint (moto server) on 127.0.0.1."""

from __future__ import annotations

import io
import json

import boto3
import pyarrow as pa
import pyarrow.parquet as pq

from rayrank.jobs.rerank import main
from tests.ray.conftest import candidates


def manifest_on_s3(s3, key: str = "reranked/day=1/_manifest.json") -> dict:
    return json.loads(s3.get_object(Bucket="logs", Key=key)["Body"].read())


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
    m = manifest_on_s3(s3)
    assert m["storage"]["staged_objects"] == m["shards"]  # one object per shard, no errors staged
    assert m["storage"]["requests"] > 0 and m["storage"]["requests_by"]["rank_tasks"] > 0
    q1 = sorted(r for r, q in zip(table["rank"].to_pylist(), table["query_id"].to_pylist()) if q == "q1")
    assert q1 == [1, 2, 3, 4, 5]
