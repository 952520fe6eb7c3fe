"""TREC runs in and out: Pyserini-style lines, malformed lines, the queries join, export and eval."""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrank.cli import main as rayrank
from rayrank.errors import InvalidInputError
from rayrank.evaluate import evaluate, load_qrels, read_run
from rayrank.io.trec import candidates_from_run, parse_run_lines, run_lines, write_run
from rayrank.io.trec import read_run as read_trec

# What Pyserini's `python -m pyserini.search.lucene ... --output run.txt` writes: f"{qid} Q0 {docid} {rank} {score:.6f} {tag}"
PYSERINI = """\
1048585 Q0 7187158 1 18.811600 Anserini
1048585 Q0 7187157 2 18.333201 Anserini
1048585 Q0 7187163 3 17.878799 Anserini
2 Q0 1000052 1 13.232100 Anserini
2 Q0 1000051 2 12.000000 Anserini
"""


def reranked(seed: int = 0) -> pa.Table:
    """A rerank job's output table: float32 scores with ties, and the job's rank (score desc, doc_id asc)."""
    rng = np.random.default_rng(seed)
    rows = []
    for q in range(6):
        scores = rng.choice([0.5, -1.25, 3.0, 0.125, 2.7182817], size=8)  # repeats: ties
        for d, score in enumerate(scores):
            rows.append({"query_id": f"q{q}", "doc_id": f"d{(d * 7) % 8}", "score": float(score)})
    table = pa.Table.from_pylist(rows).set_column(2, "score", pa.array([r["score"] for r in rows], pa.float32()))
    ordered = table.sort_by([("query_id", "ascending"), ("score", "descending"), ("doc_id", "ascending")])
    qids = ordered["query_id"].to_pylist()
    ranks = [1 if i == 0 or qids[i] != qids[i - 1] else 0 for i in range(len(qids))]
    for i in range(1, len(ranks)):
        ranks[i] = ranks[i] or ranks[i - 1] + 1
    return ordered.append_column("rank", pa.array(ranks, pa.int32()))


def job_output(tmp_path, table: pa.Table):
    """A directory shaped like a rerank OUTPUT: two part files (by query), errors and a manifest."""
    out = tmp_path / "out"
    (out / "_errors").mkdir(parents=True)
    first = table.filter(pa.compute.is_in(table["query_id"], pa.array(["q0", "q1", "q2"])))
    rest = table.filter(pa.compute.invert(pa.compute.is_in(table["query_id"], pa.array(["q0", "q1", "q2"]))))
    pq.write_table(first, out / "part-00000.parquet")
    pq.write_table(rest, out / "part-00001.parquet")
    pq.write_table(pa.table({"reason": ["x"]}), out / "_errors" / "invalid-1.parquet")
    (out / "_manifest.json").write_text("{}")
    return out


def test_pyserini_run_reads_with_tabs_blank_lines_and_trailing_spaces(tmp_path):
    messy = PYSERINI.replace("1048585 Q0 7187157", "1048585\tQ0\t7187157").replace("Anserini\n", "Anserini  \n", 1)
    path = tmp_path / "bm25.run"
    path.write_text("\n" + messy + "\n\n")
    table = read_trec(str(path))
    assert table["query_id"].to_pylist() == ["1048585"] * 3 + ["2"] * 2
    assert table["doc_id"].to_pylist()[:2] == ["7187158", "7187157"]
    assert table["first_rank"].to_pylist() == [1, 2, 3, 1, 2]
    assert table["first_score"].to_pylist()[0] == 18.8116
    assert table["_line"].to_pylist() == [2, 3, 4, 5, 6]  # line numbers of the file


def test_gzipped_run_reads(tmp_path):
    path = tmp_path / "bm25.run.gz"
    path.write_bytes(gzip.compress(PYSERINI.encode()))
    assert read_trec(str(path)).num_rows == 5


@pytest.mark.parametrize("line, problem", [
    ("q1 Q0 d1 1 2.5", "5 fields"),
    ("q1 Q0 d1 1 2.5 tag extra", "7 fields"),
    ("q1 Q0 d1 first 2.5 tag", "rank 'first' is not an integer"),
    ("q1 Q0 d1 1 high tag", "score 'high' is not a number"),
    ("q1 Q0 d1 1 nan tag", "score 'nan' is not a finite number"),
])
def test_malformed_line_is_refused_with_its_number(line, problem):
    lines = ["q1 Q0 d0 1 3.0 tag", "", line, "q1 Q0 d2 3 1.0 tag"]
    with pytest.raises(InvalidInputError, match=re.escape("run.txt:3: expected 'qid Q0 docid rank score tag'")) as info:
        parse_run_lines(iter(lines), "run.txt")
    assert problem in str(info.value) and line in str(info.value)


def test_candidates_join_queries_and_missing_queries_become_error_rows(tmp_path):
    run = tmp_path / "bm25.run"
    run.write_text(PYSERINI + "404 Q0 d9 1 1.0 Anserini\n")
    queries = tmp_path / "queries.parquet"
    pq.write_table(pa.table({"qid": [1048585, 2, 3], "text": ["what is ray", "   ", "unused"]}), queries)
    from rayrank.config import Columns

    candidates, errors = candidates_from_run(str(run), str(queries), columns=Columns(query_id="qid", query="text"))
    assert candidates.column_names == ["query_id", "query", "doc_id", "first_rank", "first_score"]
    assert candidates["query_id"].to_pylist() == ["1048585"] * 3
    assert set(candidates["query"].to_pylist()) == {"what is ray"}
    assert candidates["first_rank"].to_pylist() == [1, 2, 3]
    by_id = {(e["query_id"], e["doc_id"]): e for e in errors.to_pylist()}
    # The blank query of "2" is refused in the queries table, so its two run rows have no query either.
    assert by_id[("2", None)]["reason"].startswith("query ")
    assert "line 4" in by_id[("2", "1000052")]["reason"] and by_id[("2", "1000052")]["source_row"] == 4
    missing = by_id[("404", "d9")]
    assert "query_id '404' (line 6) is not a valid row of the queries table" in missing["reason"]
    assert missing["source"] == str(run) and json.loads(missing["row"])["first_score"] == 1.0
    assert candidates.num_rows + sum(1 for e in errors.to_pylist() if e["doc_id"]) == 6  # no run row lost


def test_round_trip_parquet_trec_parquet(tmp_path):
    table = reranked()
    path = tmp_path / "run.trec"
    assert write_run(table, str(path), tag="ce") == table.num_rows
    back = read_trec(str(path))
    assert back["query_id"].to_pylist() == table["query_id"].to_pylist()
    assert back["doc_id"].to_pylist() == table["doc_id"].to_pylist()
    assert back["first_rank"].to_pylist() == table["rank"].to_pylist()  # ties broken as the job does
    assert back["first_score"].cast(pa.float32()).equals(table["score"])  # float32 scores exactly
    assert {line.split()[5] for line in path.read_text().splitlines()} == {"ce"}


def test_run_lines_rank_by_score_whatever_the_row_order_and_cut_top_n():
    table = reranked()
    shuffled = table.take(pa.array(np.random.default_rng(1).permutation(table.num_rows)))
    assert list(run_lines(shuffled)) == list(run_lines(table))
    top = [line.split() for line in run_lines(shuffled, top_n=2)]
    assert len(top) == 12 and {int(parts[3]) for parts in top} == {1, 2}


def test_run_lines_refuse_what_a_run_cannot_hold():
    with pytest.raises(InvalidInputError, match="tag must be one word"):
        list(run_lines(reranked(), tag="two words"))
    with pytest.raises(InvalidInputError, match="id 'a b' holds white space"):
        list(run_lines(pa.table({"query_id": ["a b"], "doc_id": ["d"], "score": [1.0]})))
    with pytest.raises(InvalidInputError, match="1 row\\(s\\) have a null"):
        list(run_lines(pa.table({"query_id": ["a"], "doc_id": ["d"], "score": pa.array([None], pa.float32())})))
    with pytest.raises(InvalidInputError, match="no column 'score'"):
        list(run_lines(pa.table({"query_id": ["a"], "doc_id": ["d"]})))


def test_export_command_writes_one_run_for_the_whole_output(tmp_path, capsys):
    table = reranked()
    out = job_output(tmp_path, table)
    target = tmp_path / "runs" / "reranked.trec"
    assert rayrank(["export", str(out), "--format", "trec", "--top-n", "3", "--tag", "minilm",
                    "--out", str(target)]) == 0
    lines = [line.split() for line in target.read_text().splitlines()]
    assert len(lines) == 18 and {parts[5] for parts in lines} == {"minilm"}
    assert [p[:4] for p in lines] == [[r["query_id"], "Q0", r["doc_id"], str(r["rank"])]
                                      for r in table.to_pylist() if r["rank"] <= 3]
    assert "wrote 18 lines for 6 queries" in capsys.readouterr().err
    assert rayrank(["export", str(out)]) == 0  # to stdout
    assert capsys.readouterr().out == "".join(run_lines(table))


def test_export_refuses_a_bad_top_n_and_a_missing_output(tmp_path, capsys):
    with pytest.raises(SystemExit):
        rayrank(["export", str(tmp_path), "--top-n", "0"])
    assert rayrank(["export", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def qrels_file(tmp_path, table: pa.Table):
    rng = np.random.default_rng(3)
    lines = [f"{r['query_id']} 0 {r['doc_id']} {int(rng.integers(0, 3))}" for r in table.to_pylist()]
    path = tmp_path / "qrels.txt"
    path.write_text("\n".join(lines) + "\nq-unranked 0 dx 1\n")
    return path


def test_eval_on_a_trec_run_equals_eval_on_the_parquet(tmp_path, capsys):
    table = reranked()
    out = job_output(tmp_path, table)
    run = tmp_path / "reranked.txt"
    write_run(table, str(run))
    qrels = load_qrels(qrels_file(tmp_path, table))
    from_parquet, from_trec = evaluate(read_run(str(out)), qrels), evaluate(read_run(str(run)), qrels)
    assert from_parquet == from_trec and from_trec.queries == 6 and from_trec.missing_from_run == 1
    results = []
    for path in (out, run):
        assert rayrank(["eval", str(path), "--qrels", str(tmp_path / "qrels.txt"), "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1] and results[0]["run (score)"]["ndcg_at_10"] > 0


def test_eval_refuses_a_broken_trec_run(tmp_path, capsys):
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("1 0 d1 1\n")
    run = tmp_path / "run.txt"
    run.write_text("1 Q0 d1 1 2.0 t\n1 Q0 d2 2 x t\n")
    assert rayrank(["eval", str(run), "--qrels", str(qrels)]) == 2
    assert f"{run}:2: expected" in capsys.readouterr().err
    run.write_text("1 Q0 d1 1 2.0 t\n1 Q0 d2 2 1.0 t\n1 Q0 d1 3 0.5 t\n")
    assert rayrank(["eval", str(run), "--qrels", str(qrels)]) == 2
    assert "ranks document 'd1' more than once for query '1' (first at line 1)" in capsys.readouterr().err
    run.write_text("1 Q0 d1 1 2.0 t\n")
    assert rayrank(["eval", str(run), "--qrels", str(qrels), "--baseline-column", "bm25_rank"]) == 2
    assert "--baseline-column needs a Parquet run" in capsys.readouterr().err
