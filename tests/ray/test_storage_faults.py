"""The S3 endpoint (a moto server) goes down mid-job: a short outage is retried, a long one fails the job
with an error naming the storage operation, and a rerun after the endpoint is back has every row once."""

from __future__ import annotations

import io
import threading
import time

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrank.jobs.rerank import main
from tests.ray.conftest import candidates


def _inputs(s3, bucket: str) -> list[dict]:
    s3.create_bucket(Bucket=bucket)
    rows = candidates(12, 25)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer, row_group_size=25)  # 12 shards of 25 rows
    s3.put_object(Bucket=bucket, Key="in/part0.parquet", Body=buffer.getvalue())
    return rows


def _output(s3, bucket: str) -> pa.Table:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="reranked/")["Contents"]]
    assert not [k for k in keys if "_staging" in k or ".tmp-" in k]
    return pa.concat_tables([pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=k)["Body"].read()))
                             for k in keys if k.rsplit("/", 1)[-1].startswith("part-")])


def _outage_after_commits(s3, bucket: str, server, commits: int, down_s: float) -> threading.Thread:
    """Stop the server once `commits` shards are committed; start it again `down_s` seconds later."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = s3.list_objects_v2(Bucket=bucket, Prefix="reranked/_staging/done/shards/").get("KeyCount", 0)
            if found >= commits:
                server.stop()
                time.sleep(down_s)
                server.start()
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("down_s", [2.0, 30.0])
def test_endpoint_down_mid_job_then_rerun_exactly_once(moto_server, job_config, capsys, down_s):
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint)
    bucket = f"logs-{int(down_s)}"  # moto keeps buckets for the whole test session
    rows = _inputs(s3, bucket)
    # One attempt per request in botocore: s3fs's retries (about 2 s) and the job's own (1 + 2 + 4 s) decide.
    config = str(job_config(shard_rows=25, rows_per_output_file=30, engine={"max_batch_size": 2},
                            storage={"config_kwargs": {"retries": {"max_attempts": 1}}}))
    args = [f"s3://{bucket}/in/", f"s3://{bucket}/reranked", "--config", config]
    watcher = _outage_after_commits(s3, bucket, moto_server, commits=2, down_s=down_s)
    code = main(args)
    watcher.join()
    err = capsys.readouterr().err
    if down_s < 5:  # shorter than the retries: the job rides it out
        assert code == 0, err[-3000:]
    else:
        assert code == 2, err[-3000:]
        assert "storage operation failed after 4 attempts" in err and "s3" not in err.split("error:")[0]
        assert any(what in err for what in ("staging shard", "committing shard", "reading shard", "writing ",
                                            "checking "))
        assert main(args) == 0
        assert "resuming:" in capsys.readouterr().err
    table = _output(s3, bucket)
    pairs = list(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist()))
    assert len(pairs) == len(set(pairs)) == len(rows)
    assert set(pairs) == {(r["query_id"], r["doc_id"]) for r in rows}
