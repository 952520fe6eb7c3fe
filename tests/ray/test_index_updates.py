"""`rayrank index add|delete|compact` end to end on the session's real local Ray: the CLI, a reader during an
add, SIGKILL during an add then rerun, and `search` / `rerank --index` after a delete."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rayrank
from rayrank.index import IndexReader
from rayrank.jobs.index import main as index_main
from rayrank.jobs.rerank import main as rerank_main
from rayrank.jobs.search import main as search_main
from tests.ray.conftest import manifest, read_errors, read_output, start_job, write_rows
from tests.ray.test_index import corpus
from tests.ray.test_resume import _count, _kill_when


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_encoder, ray_cluster):
    """A 60-document index (3 shards) and the config its updates run with."""
    root = tmp_path_factory.mktemp("updates")
    write_rows(root / "docs.parquet", corpus(60), row_group_size=20)
    config = root / "index.yaml"
    config.write_text(json.dumps({"engine": {"model": str(tiny_encoder)}, "shard_rows": 20,
                                  "cluster": {"address": ray_cluster, "actors": "1,1", "cpus_per_actor": 0.5}}))
    assert index_main([str(root / "docs.parquet"), str(root / "ix"), "--config", str(config)]) == 0
    update = root / "update.yaml"  # an update takes its cluster (and storage, columns) only
    update.write_text(json.dumps({"cluster": json.loads(config.read_text())["cluster"]}))
    return root, update


@pytest.fixture
def index(built, tmp_path):
    """A copy of the built index for one test to change."""
    shutil.copytree(built[0] / "ix", tmp_path / "ix")
    return tmp_path / "ix"


def new_docs(path, n: int, replaced: dict[str, str] | None = None, row_group_size: int = 20):
    rows = corpus(n, prefix="n") + [{"doc_id": d, "text": t} for d, t in (replaced or {}).items()]
    return write_rows(path, rows, row_group_size=row_group_size)


def test_add_delete_compact_from_the_cli(built, index, tmp_path, tiny_encoder, capsys):
    _, config = built
    docs = new_docs(tmp_path / "new.parquet", 10, {"d3": "fish sea light replaced"})
    assert index_main(["add", str(index), str(docs), "--config", str(config)]) == 0
    m = manifest(index)
    assert m["generation"] == 1 and m["docs"] == 70 and m["updates"][-1]["replaced"] == 1
    assert m["drift"]["codec_residual_error"] == m["compression"]["residual_error"] > 0
    assert "generation 1" in capsys.readouterr().out
    reader = IndexReader(str(index))
    scorer = rayrank.Reranker(str(tiny_encoder), scorer="late-interaction").scorer
    assert np.array_equal(reader.get(["d3"])[0], scorer.encode_documents(["fish sea light replaced"])[0])
    assert {f"n{i}" for i in range(10)} <= set(reader.doc_ids) and len(reader) == 70
    assert not (index / "_update").exists()
    assert index_main(["add", str(index), str(docs), "--config", str(config)]) == 0  # the same add again
    assert "nothing to do" in capsys.readouterr().err and manifest(index)["generation"] == 1

    (tmp_path / "ids.txt").write_text("d1\nn2\n\nnope\n")
    assert index_main(["delete", str(index), str(tmp_path / "ids.txt")]) == 0
    assert "deleted 2 docs; 1 ids were not in the index" in capsys.readouterr().out
    pq.write_table(pa.table({"doc_id": ["d4"]}), tmp_path / "ids.parquet")
    assert index_main(["delete", str(index), str(tmp_path / "ids.parquet")]) == 0
    gone = {"d1", "n2", "d4"}
    assert not gone & set(IndexReader(str(index)).doc_ids) and manifest(index)["docs"] == 67

    assert index_main(["compact", str(index)]) == 0
    assert "dropped 4 dead rows" in capsys.readouterr().out  # d1, n2, d4 and d3's replaced row
    assert index_main(["compact", str(index), "--retrain"]) == 0
    m = manifest(index)
    assert m["generation"] == 5 and m["compression"]["codec"]["path"] == "codec-000005.npz"
    after = IndexReader(str(index))
    assert len(after) == 67 and not gone & set(after.doc_ids)
    assert index_main(["compact", str(index), "--config", str(tmp_path / "ids.txt")]) == 2  # not YAML settings


def test_search_and_rerank_never_return_a_deleted_document(built, index, tmp_path, job_config):
    (tmp_path / "ids.txt").write_text("d0\nd7\nd14\n")
    assert index_main(["delete", str(index), str(tmp_path / "ids.txt")]) == 0
    queries = [{"query_id": f"q{i}", "query": q} for i, q in enumerate(["ray cluster", "python data", "fish sea"])]
    write_rows(tmp_path / "queries.parquet", queries)
    for method in ("exact", "ivf"):
        out = tmp_path / method
        assert search_main([str(index), str(tmp_path / "queries.parquet"), str(out), "--k", "60",
                            "--method", method, "--candidates", "60"]) == 0
        found = set(pq.read_table(out / "part-00000.parquet")["doc_id"].to_pylist())
        assert found and not found & {"d0", "d7", "d14"}
    assert index_main(["compact", str(index)]) == 0  # the rows go; the deleted ids stay refused
    docs = corpus(20)
    rows = [{"query_id": "q0", "query": "ray cluster", "doc_id": d["doc_id"], "text": d["text"]} for d in docs]
    write_rows(tmp_path / "in" / "c.parquet", rows)
    out = tmp_path / "reranked"
    assert rerank_main([str(tmp_path / "in"), str(out), "--config", str(job_config()), "--index", str(index)]) == 0
    assert set(read_output(out)["doc_id"].to_pylist()) == {d["doc_id"] for d in docs} - {"d0", "d7", "d14"}
    reasons = sorted(read_errors(out)["reason"].to_pylist())
    assert reasons == sorted(f"doc_id {d!r} was deleted from the index {index}" for d in ("d0", "d7", "d14"))


def test_a_reader_during_an_add_sees_the_index_before_or_after(built, index, tmp_path):
    _, config = built
    before = set(IndexReader(str(index)).doc_ids)
    docs = new_docs(tmp_path / "new.parquet", 40, {"d5": "replaced while read"})
    seen, stop = [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            reader = IndexReader(str(index))
            seen.append((reader.generation, frozenset(reader.doc_ids), len(reader.get(reader.doc_ids))))

    thread = threading.Thread(target=read)
    thread.start()
    try:
        assert index_main(["add", str(index), str(docs), "--config", str(config)]) == 0
    finally:
        stop.set()
        thread.join()
    after = before | {f"n{i}" for i in range(40)}
    assert set(IndexReader(str(index)).doc_ids) == after
    assert {g for g, _, _ in seen} <= {0, 1} and len(seen) > 1
    assert all(ids == (before if g == 0 else after) and n == len(ids) for g, ids, n in seen)


def test_sigkill_during_an_add_then_rerun_adds_every_doc_exactly_once(built, index, tmp_path, tiny_encoder, capsys):
    _, config = built
    docs = new_docs(tmp_path / "new.parquet", 160, {"d2": "the new d2"})  # 9 shards of 20 rows
    args = ["add", str(index), str(docs), "--config", str(config)]
    shards = index / "_update" / "_staging" / "done" / "shards"
    _kill_when(start_job(args, "rayrank.jobs.index"), lambda: _count(shards) >= 2, "two shards committed",
               timeout=900)
    assert _count(shards) < 9, "the add finished before it could be killed"
    assert "generation" not in manifest(index) and len(IndexReader(str(index))) == 60  # still generation 0
    (tmp_path / "ids.txt").write_text("d1\n")
    assert index_main(["delete", str(index), str(tmp_path / "ids.txt")]) == 2  # the killed add holds the lease
    assert "another update in progress or killed (add started" in capsys.readouterr().err

    assert index_main(args) == 0
    assert "resuming" in capsys.readouterr().err
    m = manifest(index)
    assert m["generation"] == 1 and m["updates"][-1]["rows_reused"] >= 40 and m["updates"][-1]["docs_added"] == 161
    reader = IndexReader(str(index))
    assert sorted(reader.doc_ids) == sorted([f"d{i}" for i in range(60)] + [f"n{i}" for i in range(160)])
    scorer = rayrank.Reranker(str(tiny_encoder), scorer="late-interaction").scorer
    assert np.array_equal(reader.get(["d2"])[0], scorer.encode_documents(["the new d2"])[0])
    assert not (index / "_update").exists() and not [p for p in index.rglob("*") if ".tmp-" in p.name]
