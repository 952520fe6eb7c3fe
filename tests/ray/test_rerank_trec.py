"""The rerank job on a TREC run file (`--queries`, `--corpus`) and back out through `rayrank export --format trec`."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from rayrank.io.trec import read_run
from rayrank.jobs.export import main as export_main
from rayrank.jobs.rerank import main
from tests.ray.conftest import candidates, manifest, read_errors, read_output, write_rows


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([("query_id", "ascending"), ("doc_id", "ascending")])


def test_trec_run_in_reranked_and_exported_back(tmp_path, job_config, capsys):
    rows = candidates(4, 6)
    lines = [f"{r['query_id']} Q0 {r['doc_id']} {r['bm25_rank']} {10.0 - r['bm25_rank']} bm25" for r in rows]
    lines.insert(5, "q9 Q0 q9-d0 1 3.5 bm25")  # no such query in the queries table
    (tmp_path / "bm25.trec").write_text("\n".join(lines) + "\n")
    write_rows(tmp_path / "queries.parquet", list({r["query_id"]: {"query_id": r["query_id"], "query": r["query"]}
                                                   for r in rows}.values()))
    write_rows(tmp_path / "corpus.parquet", [{"doc_id": r["doc_id"], "text": r["text"]} for r in rows])
    write_rows(tmp_path / "inline.parquet", rows)
    config = str(job_config())
    out = tmp_path / "out"
    assert main([str(tmp_path / "bm25.trec"), str(out), "--config", config, "--queries",
                 str(tmp_path / "queries.parquet"), "--corpus", str(tmp_path / "corpus.parquet")]) == 0
    assert main([str(tmp_path / "inline.parquet"), str(tmp_path / "inline"), "--config", config]) == 0

    table, inline = _sorted(read_output(out)), _sorted(read_output(tmp_path / "inline"))
    assert table.select(["query_id", "doc_id", "rank"]).equals(inline.select(["query_id", "doc_id", "rank"]))
    np.testing.assert_allclose(table["score"].to_numpy(), inline["score"].to_numpy(), rtol=0, atol=1e-5)
    assert table["first_rank"].to_pylist() == inline["bm25_rank"].to_pylist()  # the first stage's rank kept
    [error] = read_errors(out).to_pylist()
    assert error["query_id"] == "q9" and error["source_row"] == 6 and "not a valid row of the queries" in error["reason"]
    m = manifest(out)
    assert m["input"] == str(tmp_path / "bm25.trec") and m["counts"]["rows_in"] == len(rows) + 1
    assert m["counts"]["rows_rejected"] == 1

    capsys.readouterr()
    assert export_main([str(out), "--format", "trec", "--tag", "rr", "--out", str(tmp_path / "rr.trec")]) == 0
    back = read_run(str(tmp_path / "rr.trec"))
    got = {(q, d): (r, s) for q, d, r, s in zip(*(back[c].to_pylist() for c in
                                                   ("query_id", "doc_id", "first_rank", "first_score")))}
    want = {(q, d): (r, s) for q, d, r, s in zip(*(table[c].to_pylist() for c in ("query_id", "doc_id", "rank", "score")))}
    assert got.keys() == want.keys()
    assert all(got[k][0] == want[k][0] and np.float32(got[k][1]) == np.float32(want[k][1]) for k in want)


def test_broken_run_and_missing_text_refused_before_ray_starts(tmp_path, job_config, capsys):
    (tmp_path / "run.trec").write_text("q1 Q0 d1 1 2.5 bm25\nq1 Q0 d2 two 2.0 bm25\n")
    write_rows(tmp_path / "queries.parquet", [{"query_id": "q1", "query": "what"}])
    write_rows(tmp_path / "corpus.parquet", [{"doc_id": "d1", "text": "a"}])
    out, config = tmp_path / "out", str(job_config())
    assert main([str(tmp_path / "run.trec"), str(out), "--config", config, "--queries",
                 str(tmp_path / "queries.parquet"), "--corpus", str(tmp_path / "corpus.parquet")]) == 2
    assert "run.trec:2: expected 'qid Q0 docid rank score tag'" in (err := capsys.readouterr().err)
    assert "rank 'two' is not an integer" in err
    assert main([str(tmp_path / "run.trec"), str(out), "--config", config, "--queries",
                 str(tmp_path / "queries.parquet")]) == 2
    assert "pass --corpus CORPUS" in capsys.readouterr().err
    assert main([str(tmp_path / "run.trec"), str(out), "--config", config]) == 2
    assert "pass --queries QUERIES" in capsys.readouterr().err
    assert not out.exists()
