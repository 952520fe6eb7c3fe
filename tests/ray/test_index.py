"""Index build, rerank --index and search end to end on the session's real local Ray; SIGKILL resume."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rayrank
from rayrank.evaluate import evaluate, read_run
from rayrank.index import IndexReader
from rayrank.jobs.index import main as index_main
from rayrank.jobs.rerank import main as rerank_main
from rayrank.jobs.search import main as search_main
from rayrank.scoring.late_interaction import maxsim
from tests.ray.conftest import manifest, read_errors, read_output, start_job, write_rows
from tests.ray.test_resume import _count, _kill_when

WORDS = ["ray", "cluster", "python", "data", "model", "query", "document", "search", "rank", "score", "fish", "sea", "light", "sun", "cat", "dog"]


def corpus(n: int, prefix: str = "d") -> list[dict]:
    return [{"doc_id": f"{prefix}{i}", "text": " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(2 + i % 11))}
            for i in range(n)]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_encoder, ray_cluster):
    """One index of 2 files / 7 shards: 120 docs, invalid rows, an in-shard and a cross-file duplicate."""
    root = tmp_path_factory.mktemp("index")
    docs = corpus(120)
    bad = [{"doc_id": None, "text": "ray"}, {"doc_id": "e1", "text": ""}, {"doc_id": "e2", "text": None},
           {"doc_id": "e3", "text": "first copy"}, {"doc_id": "e3", "text": "same shard duplicate"},
           {"doc_id": "d100", "text": "seen before b.parquet's d100"}]
    write_rows(root / "docs" / "a.parquet", docs[:60] + bad, row_group_size=20)  # bad rows: one shard
    write_rows(root / "docs" / "b.parquet", docs[60:], row_group_size=20)
    config = root / "index.yaml"
    config.write_text(json.dumps({"engine": {"model": str(tiny_encoder)},
                                  "cluster": {"address": ray_cluster, "actors": "1,1", "cpus_per_actor": 0.5},
                                  "shard_rows": 20}))
    assert index_main([str(root / "docs"), str(root / "ix"), "--config", str(config)]) == 0
    return root, docs, config


def test_build_indexes_every_doc_once_with_errors(built):
    root, docs, _ = built
    m = manifest(root / "ix")
    assert m["counts"] == {"rows_in": 126, "docs_indexed": 121, "rows_rejected": 5, "rows_invalid": 4,
                           "rows_duplicate": 1, "rows_reused": 0}
    reader = IndexReader(str(root / "ix"))
    assert sorted(reader.doc_ids) == sorted([d["doc_id"] for d in docs] + ["e3"]) and len(reader) == 121
    errors = read_errors(root / "ix").to_pylist()
    reasons = {(e["doc_id"], e["reason"]) for e in errors}
    assert (None, "doc_id is null") in reasons and ("e1", "text is empty") in reasons
    assert ("e2", "text is null") in reasons
    assert ("e3", "duplicate doc_id: first seen at row 63 of " + str(root / "docs" / "a.parquet")) in reasons
    assert ("d100", "duplicate doc_id: indexed from an earlier shard") in reasons
    dup = next(e for e in errors if e["reason"].startswith("duplicate doc_id: indexed"))
    assert dup["source"].endswith("b.parquet") and dup["source_row"] == 40
    assert json.loads(dup["row"]) == {"doc_id": "d100"}
    assert m["total_tokens"] == int(reader.sizes.sum()) and m["docs"] == 121
    assert m["dim"] == 32 and m["dtype"] == "float16" and m["model"]["source"] == "local"
    assert m["conventions"]["skiplist_words"] and m["document_max_length"] == 64
    for shard in m["shards"]:  # the manifest's checksums are those of the files
        for f in shard["files"].values():
            assert hashlib.sha256((root / "ix" / f["path"]).read_bytes()).hexdigest() == f["sha256"]
    assert not (root / "ix" / "_staging").exists()


def test_index_scores_equal_on_the_fly_scores(built, tiny_encoder):
    root, docs, _ = built
    reader = IndexReader(str(root / "ix"))
    scorer = rayrank.Reranker(str(tiny_encoder), scorer="late-interaction").scorer
    query = "what is ray python search"
    texts = [d["text"] for d in docs if d["doc_id"] != "d100"]
    ids = [d["doc_id"] for d in docs if d["doc_id"] != "d100"]
    fresh = scorer.score_pairs([query] * len(texts), texts).scores
    stored = maxsim(scorer.encode_queries([query])[0], reader.get(ids))
    # both sides hold float16 token vectors; only batch composition can move a value by an fp16 ulp
    np.testing.assert_allclose(stored, fresh, rtol=2e-3, atol=2e-3)
    assert np.array_equal(reader.get(["d5"])[0], scorer.encode_documents([docs[5]["text"]])[0])


def test_rerank_from_index_encodes_only_missing_docs(built, tmp_path, job_config):
    root, docs, _ = built
    rows = [{"query_id": f"q{q}", "query": f"what is {WORDS[q]}", "doc_id": d["doc_id"], "text": d["text"]}
            for q in range(3) for d in docs[:30]]
    rows += [{"query_id": "q0", "query": "what is ray", "doc_id": "new1", "text": "fish sea light"}]
    write_rows(tmp_path / "in" / "c.parquet", rows)
    config = str(job_config(shard_rows=40))
    assert rerank_main([str(tmp_path / "in"), str(tmp_path / "plain"), "--config", config]) == 0
    assert rerank_main([str(tmp_path / "in"), str(tmp_path / "ix"), "--config", config,
                        "--index", str(root / "ix")]) == 0
    plain, indexed = read_output(tmp_path / "plain"), read_output(tmp_path / "ix")
    key = lambda t: {(q, d): s for q, d, s in zip(*(t[c].to_pylist() for c in ("query_id", "doc_id", "score")))}
    a, b = key(plain), key(indexed)
    assert a.keys() == b.keys() and len(a) == 91
    np.testing.assert_allclose([b[k] for k in a], [a[k] for k in a], rtol=2e-3, atol=2e-3)
    m = manifest(tmp_path / "ix")
    assert m["counts"]["index_missing"] == 1 and m["config"]["index"] == str(root / "ix")


def test_search_exact_and_ivf_written_in_rerank_layout(built, tmp_path, tiny_encoder):
    root, _, _ = built
    queries = [{"query_id": f"q{i}", "query": f"{WORDS[i]} {WORDS[i + 3]}"} for i in range(5)]
    queries += [{"query_id": "q0", "query": "again"}, {"query_id": "qx", "query": ""}]
    write_rows(tmp_path / "queries.parquet", queries)
    out = tmp_path / "exact"
    assert search_main([str(root / "ix"), str(tmp_path / "queries.parquet"), str(out), "--top-n", "10"]) == 0
    table = pq.read_table(out / "part-00000.parquet")
    assert table.num_rows == 50 and table.column_names == ["query_id", "doc_id", "score", "rank"]
    reasons = sorted(read_errors(out)["reason"].to_pylist())
    assert reasons == [f"duplicate query_id: first seen at row 0 of {tmp_path / 'queries.parquet'}", "query is empty"]
    # brute force over the index: every document scored with maxsim
    reader = IndexReader(str(root / "ix"))
    scorer = rayrank.Reranker(str(tiny_encoder), scorer="late-interaction").scorer
    q0 = scorer.encode_queries([queries[0]["query"]])[0]
    scores = maxsim(q0, reader.get(reader.doc_ids))
    best = np.sort(scores)[::-1][:10]
    got = table.filter(pa.compute.equal(table["query_id"], "q0"))
    np.testing.assert_allclose(got["score"].to_numpy(), best, rtol=1e-5)
    assert got["rank"].to_pylist() == list(range(1, 11))
    run = read_run(str(out))
    qrels = {"q0": {got["doc_id"][0].as_py(): 1}}
    assert evaluate(run, qrels).ndcg_at_10 == 1.0
    ivf = tmp_path / "ivf"
    assert search_main([str(root / "ix"), str(tmp_path / "queries.parquet"), str(ivf), "--top-n", "10",
                        "--method", "ivf", "--nprobe", "64", "--candidates", "200"]) == 0
    assert read_run(str(ivf)) .keys() == run.keys()
    assert manifest(ivf)["method"] == "ivf"


def test_residual_pooled_index_is_smaller_and_close(built, tmp_path, tiny_encoder):
    root, _, config = built
    out = tmp_path / "small"
    assert index_main([str(root / "docs"), str(out), "--config", str(config), "--compression", "residual",
                       "--nbits", "4", "--pool-factor", "2"]) == 0
    full, small = manifest(root / "ix"), manifest(out)
    assert small["bytes_per_doc"] * 4 < full["bytes_per_doc"]
    assert small["total_tokens"] < full["total_tokens"] and small["compression"]["nbits"] == 4
    reader_full, reader_small = IndexReader(str(root / "ix")), IndexReader(str(out))
    scorer = rayrank.Reranker(str(tiny_encoder), scorer="late-interaction").scorer
    q = scorer.encode_queries(["ray python search data"])[0]
    ids = reader_full.doc_ids
    exact, approx = maxsim(q, reader_full.get(ids)), maxsim(q, reader_small.get(ids))
    assert np.corrcoef(exact, approx)[0, 1] > 0.9


def test_rerun_of_finished_build_is_a_no_op_and_other_build_refused(built, capsys):
    root, _, config = built
    assert index_main([str(root / "docs"), str(root / "ix"), "--config", str(config)]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert index_main([str(root / "docs"), str(root / "ix"), "--config", str(config), "--pool-factor", "3"]) == 2
    assert "holds results of a different job" in capsys.readouterr().err


def test_sigkill_then_rerun_indexes_every_doc_exactly_once(tmp_path, tiny_encoder, ray_cluster, capsys):
    docs = corpus(239) + [{"doc_id": "d0", "text": "a second copy of d0, in the last shard"}]
    for i in range(3):  # 3 files x 4 row groups of 20 rows -> 12 shards
        write_rows(tmp_path / "docs" / f"p{i}.parquet", docs[i * 80:(i + 1) * 80], row_group_size=20)
    config = tmp_path / "index.yaml"
    config.write_text(json.dumps({"engine": {"model": str(tiny_encoder)}, "shard_rows": 20,
                                  "cluster": {"address": ray_cluster, "actors": "1,1", "cpus_per_actor": 0.5}}))
    out = tmp_path / "ix"
    args = [str(tmp_path / "docs"), str(out), "--config", str(config)]
    shards = out / "_staging" / "done" / "shards"
    # a generous wait: on a loaded machine the first shards can take minutes
    _kill_when(start_job(args, "rayrank.jobs.index"), lambda: _count(shards) >= 2, "two shards committed", timeout=900)
    assert _count(shards) < 12, "the build finished before it could be killed"
    assert not (out / "_manifest.json").exists()

    assert index_main(args) == 0
    m = manifest(out)
    assert m["counts"]["rows_reused"] >= 40 and "resuming" in capsys.readouterr().err
    reader = IndexReader(str(out))
    assert sorted(reader.doc_ids) == sorted(d["doc_id"] for d in docs[:239]) and len(reader) == 239
    assert m["counts"]["docs_indexed"] == 239 and m["counts"]["rows_in"] == 240
    assert read_errors(out)["reason"].to_pylist() == ["duplicate doc_id: indexed from an earlier shard"]
    scorer = rayrank.Reranker(str(tiny_encoder), scorer="late-interaction").scorer
    assert np.array_equal(reader.get(["d0"])[0], scorer.encode_documents([docs[0]["text"]])[0])  # the first copy
    assert not (out / "_staging").exists() and not [p for p in out.rglob("*") if ".tmp-" in p.name]
