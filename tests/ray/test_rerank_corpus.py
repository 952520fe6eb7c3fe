"""The rerank job on candidates given by id (`--corpus`): the bucketed join, its errors, S3, and a killed join."""

from __future__ import annotations

import io
import json

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayrank.jobs.rerank import main
from tests.ray.conftest import candidates, manifest, read_errors, read_output, start_job, write_rows
from tests.ray.test_resume import _assert_exactly_once, _kill_when


def _split(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the log: rows without text, the corpus: each document once)."""
    log = [{k: v for k, v in r.items() if k != "text"} for r in rows]
    corpus = list({r["doc_id"]: {"doc_id": r["doc_id"], "text": r["text"]} for r in rows}.values())
    return log, corpus


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([("query_id", "ascending"), ("doc_id", "ascending")])


def test_join_equals_inline_text_with_missing_ids_and_duplicate_documents(tmp_path, job_config, capsys):
    rows = candidates(6, 8)
    log, corpus = _split(rows)
    log += [{"query_id": "q0", "query": rows[0]["query"], "doc_id": "ghost", "bm25_rank": 99}]
    corpus.insert(3, {"doc_id": "unused", "text": "a document no candidate names"})
    corpus.append({"doc_id": corpus[0]["doc_id"], "text": "a second text under the same id"})
    write_rows(tmp_path / "inline.parquet", rows)
    write_rows(tmp_path / "log" / "a.parquet", log[:20])
    write_rows(tmp_path / "log" / "b.parquet", log[20:])
    write_rows(tmp_path / "corpus" / "c1.parquet", corpus[:30])
    write_rows(tmp_path / "corpus" / "c2.parquet", corpus[30:])
    config = str(job_config(corpus_bucket_rows=10))  # 5 join buckets for 50 documents
    assert main([str(tmp_path / "inline.parquet"), str(tmp_path / "inline"), "--config", config]) == 0
    capsys.readouterr()
    assert main([str(tmp_path / "log"), str(tmp_path / "joined"), "--config", config,
                 "--corpus", str(tmp_path / "corpus")]) == 0
    assert "corpus         50 rows" in capsys.readouterr().out

    inline, joined = _sorted(read_output(tmp_path / "inline")), _sorted(read_output(tmp_path / "joined"))
    assert joined.drop_columns(["score"]).equals(inline.drop_columns(["score"]))  # bm25_rank passed through
    np.testing.assert_allclose(joined["score"].to_numpy(), inline["score"].to_numpy(), rtol=0, atol=1e-5)
    errors = {r["doc_id"]: r for r in read_errors(tmp_path / "joined").to_pylist()}
    assert sorted(errors) == ["ghost", corpus[0]["doc_id"]]
    assert errors["ghost"]["reason"] == f"doc_id 'ghost' is not a valid row of the corpus {tmp_path / 'corpus'}"
    assert errors["ghost"]["query_id"] == "q0" and errors["ghost"]["source"].endswith("b.parquet")
    duplicate = errors[corpus[0]["doc_id"]]  # the later copy is refused; the reason names the kept row
    assert duplicate["reason"] == f"duplicate doc_id: first seen at row 0 of {tmp_path / 'corpus' / 'c1.parquet'}"
    assert duplicate["source"] == str(tmp_path / "corpus" / "c2.parquet") and duplicate["source_row"] == 19
    assert "a second text" in duplicate["row"]
    m = manifest(tmp_path / "joined")
    c = m["counts"]
    assert c["rows_in"] == len(log) and c["rows_scored"] == len(rows) and c["rows_rejected"] == 1
    assert c["corpus_rows_in"] == len(corpus) and c["corpus_rows_rejected"] == 1
    assert m["corpus"]["buckets"] == 5


def test_corpus_on_s3(tmp_path, s3_endpoint, job_config):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="docs")
    rows = candidates(3, 5)
    log, corpus = _split(rows)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"id": d["doc_id"], "passage": d["text"]} for d in corpus]), buffer)
    s3.put_object(Bucket="docs", Key="corpus/part0.parquet", Body=buffer.getvalue())
    write_rows(tmp_path / "log.parquet", log)
    config = job_config(corpus={"path": "s3://docs/corpus/", "doc_id": "id", "text": "passage"})
    assert main([str(tmp_path / "log.parquet"), "s3://docs/reranked", "--config", str(config)]) == 0
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="docs", Prefix="reranked/")["Contents"]]
    assert not [k for k in keys if "_staging" in k]
    table = pa.concat_tables([pq.read_table(io.BytesIO(s3.get_object(Bucket="docs", Key=k)["Body"].read()))
                              for k in keys if k.rsplit("/", 1)[-1].startswith("part-")])
    assert sorted(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist())) == sorted(
        (r["query_id"], r["doc_id"]) for r in rows)


def test_sigkill_during_the_join_then_rerun_completes_exactly_once(tmp_path, job_config):
    rows = candidates(12, 25)
    log, corpus = _split(rows)
    for i in range(3):
        write_rows(tmp_path / "log" / f"part{i}.parquet", log[i * 100:(i + 1) * 100], row_group_size=25)
    write_rows(tmp_path / "corpus.parquet", corpus, row_group_size=50)
    out = tmp_path / "out"
    args = [str(tmp_path / "log"), str(out), "--config", str(job_config(shard_rows=25, corpus_bucket_rows=25)),
            "--corpus", str(tmp_path / "corpus.parquet")]
    proc = start_job(args)
    done = out / "_staging" / "done" / "shards"
    _kill_when(proc, lambda: len(list(done.glob("join-*.json"))) >= 1, "a join bucket committed")
    assert main(args) == 0
    _assert_exactly_once(out, rows)
    assert manifest(out)["counts"]["rows_reused"] > 0


def test_inputs_that_cannot_be_joined_are_refused_before_ray_starts(tmp_path, job_config, capsys):
    rows = candidates(2, 3)
    write_rows(tmp_path / "with_text.parquet", rows)
    write_rows(tmp_path / "corpus.parquet", _split(rows)[1])
    config = str(job_config())
    out = tmp_path / "out"
    assert main([str(tmp_path / "with_text.parquet"), str(out), "--config", config,
                 "--corpus", str(tmp_path / "corpus.parquet")]) == 2
    assert "has a 'text' column and a corpus was given" in capsys.readouterr().err
    write_rows(tmp_path / "log.parquet", _split(rows)[0])
    assert main([str(tmp_path / "log.parquet"), str(out), "--config", config,
                 "--corpus", str(tmp_path / "log.parquet")]) == 2
    assert "missing required column(s) text" in capsys.readouterr().err
    assert main([str(tmp_path / "log.parquet"), str(out), "--config", config,
                 "--queries", str(tmp_path / "log.parquet")]) == 2
    assert "INPUT" in capsys.readouterr().err and not out.exists()


def test_index_needs_no_text(tmp_path, job_config, tiny_encoder, ray_cluster):
    from rayrank.jobs.index import main as index_main

    rows = candidates(3, 6)
    log, corpus = _split(rows)
    write_rows(tmp_path / "docs.parquet", corpus)
    index_config = tmp_path / "index.yaml"
    index_config.write_text(json.dumps({"engine": {"model": str(tiny_encoder)},
                                        "cluster": {"address": ray_cluster, "actors": "1,1", "cpus_per_actor": 0.5}}))
    assert index_main([str(tmp_path / "docs.parquet"), str(tmp_path / "ix"), "--config", str(index_config)]) == 0
    write_rows(tmp_path / "with_text.parquet", rows)
    write_rows(tmp_path / "log.parquet", log + [{**log[0], "doc_id": "not-indexed"}])
    config = str(job_config())
    assert main([str(tmp_path / "with_text.parquet"), str(tmp_path / "a"), "--config", config,
                 "--index", str(tmp_path / "ix")]) == 0
    assert main([str(tmp_path / "log.parquet"), str(tmp_path / "b"), "--config", config,
                 "--index", str(tmp_path / "ix")]) == 0
    a, b = _sorted(read_output(tmp_path / "a")), _sorted(read_output(tmp_path / "b"))
    assert b.drop_columns(["score"]).equals(a.drop_columns(["score"]))
    np.testing.assert_allclose(b["score"].to_numpy(), a["score"].to_numpy(), rtol=0, atol=1e-5)
    [error] = read_errors(tmp_path / "b").to_pylist()
    assert error["doc_id"] == "not-indexed" and error["reason"] == (
        f"doc_id 'not-indexed' is not in the index {tmp_path / 'ix'} and the input has no text to encode it")
