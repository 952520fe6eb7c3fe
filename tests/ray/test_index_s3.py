"""The index job from s3:// to s3:// (moto server), read back by byte ranges and searched from S3."""

from __future__ import annotations

import io
import json

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayrank.index import IndexReader, exact_search, update
from rayrank.io.storage import storage_options
from rayrank.jobs.index import main as index_main
from rayrank.jobs.search import main as search_main
from tests.ray.test_index import corpus


def test_index_and_search_on_s3(s3_endpoint, tmp_path, tiny_encoder, ray_cluster):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="corpus")
    docs = corpus(60)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(docs), buffer, row_group_size=20)
    s3.put_object(Bucket="corpus", Key="docs/part0.parquet", Body=buffer.getvalue())
    buffer = io.BytesIO()
    pq.write_table(pa.table({"query_id": ["q0", "q1"], "query": ["ray python", "fish sea"]}), buffer)
    s3.put_object(Bucket="corpus", Key="queries.parquet", Body=buffer.getvalue())
    config = tmp_path / "index.yaml"
    config.write_text(json.dumps({"engine": {"model": str(tiny_encoder)}, "shard_rows": 20,
                                  "cluster": {"address": ray_cluster, "actors": "1,1", "cpus_per_actor": 0.5}}))
    assert index_main(["s3://corpus/docs/", "s3://corpus/index/", "--config", str(config),
                       "--compression", "residual", "--nbits", "4"]) == 0
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="corpus", Prefix="index/")["Contents"]}
    assert "index/_manifest.json" in keys and "index/codec.npz" in keys
    assert not [k for k in keys if "_staging" in k or ".tmp-" in k]

    remote = IndexReader("s3://corpus/index/", storage_options(None, "s3://corpus/index/"))
    local = tmp_path / "local"
    for key in keys:  # the same index on local disk: memory-mapped reads must equal S3 byte ranges
        (local / key.removeprefix("index/")).parent.mkdir(parents=True, exist_ok=True)
        s3.download_file("corpus", key, str(local / key.removeprefix("index/")))
    mapped = IndexReader(str(local))
    assert remote.doc_ids == mapped.doc_ids and len(remote) == 60
    for a, b in zip(remote.get(remote.doc_ids), mapped.get(remote.doc_ids)):
        assert np.array_equal(a, b)
    q = [np.eye(32, dtype=np.float32)[:3]]
    assert exact_search(remote, q, 5)[0].doc_ids == exact_search(mapped, q, 5)[0].doc_ids

    assert search_main(["s3://corpus/index/", "s3://corpus/queries.parquet", "s3://corpus/search/",
                        "--top-n", "7"]) == 0
    body = s3.get_object(Bucket="corpus", Key="search/part-00000.parquet")["Body"].read()
    assert pq.read_table(io.BytesIO(body)).num_rows == 14

    # updates on S3 (no exclusive create there: the lease is a PUT, the generation check guards publishing)
    options = storage_options(None, "s3://corpus/index/")
    update.append("s3://corpus/index/", ["n0", "d1"], mapped.get(["d0", "d0"]), storage_options=options)
    assert update.delete("s3://corpus/index/", ["d2"], options)["deleted"] == 1
    update.compact("s3://corpus/index/", storage_options=options)
    after = IndexReader("s3://corpus/index/", options)
    assert after.generation == 3 and len(after) == 60 and "d2" not in after and after.deleted == {"d2"}
    assert np.array_equal(after.get(["n0"])[0], after.get(["d1"])[0])  # d1 replaced by d0's vectors
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="corpus", Prefix="index/")["Contents"]}
    assert not [k for k in keys if "_update" in k or ".tmp-" in k]
