import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrank.evaluate import evaluate, load_qrels, main


def test_metrics_by_hand():
    qrels = {"q1": {"a": 3, "b": 0, "c": 1}, "q2": {"x": 2}, "q3": {"z": 1}}
    run = {"q1": {"a": 0.1, "b": 0.9, "c": 0.5}, "q2": {"y": 1.0, "x": 0.5}, "unjudged": {"k": 1.0}}
    m = evaluate(run, qrels)
    # q1 ranking b, c, a: DCG = 0 + 1/log2(3) + 3/log2(4); ideal a, c: 3 + 1/log2(3).
    q1 = (1 / math.log2(3) + 3 / 2) / (3 + 1 / math.log2(3))
    q2 = (2 / math.log2(3)) / 2
    assert m.ndcg_at_10 == pytest.approx((q1 + q2) / 2)
    assert m.mrr_at_10 == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert m.recall_at_10 == pytest.approx(1.0)
    assert (m.queries, m.skipped_unjudged, m.missing_from_run) == (2, 1, 1)
    # With TREC-DL's passage threshold only grade ≥ 2 counts for MRR.
    assert evaluate(run, qrels, min_relevance=2).mrr_at_10 == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_ties_break_by_doc_id_descending():
    m = evaluate({"q": {"a": 1.0, "b": 1.0}}, {"q": {"a": 1}})
    assert m.mrr_at_10 == pytest.approx(0.5)  # trec_eval puts "b" first


def test_cli_json_with_baseline(tmp_path, capsys):
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 a 2\nq1 0 b 0\n")
    run = tmp_path / "run"
    run.mkdir()
    pq.write_table(pa.table({"query_id": ["q1", "q1"], "doc_id": ["a", "b"], "score": [0.9, 0.1],
                             "bm25_rank": [2, 1]}), run / "part-00000.parquet")
    assert main([str(run), "--qrels", str(qrels), "--baseline-column", "bm25_rank", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run (score)"]["ndcg_at_10"] == pytest.approx(1.0)
    assert out["baseline (bm25_rank)"]["mrr_at_10"] == pytest.approx(0.5)


def test_bad_qrels_line(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("q1 0 a\n")
    with pytest.raises(ValueError, match="qrels.txt:1: expected 'query_id 0 doc_id grade'"):
        load_qrels(path)


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("unfinished", "holds no result files (part-*.parquet): the job has not finished"),
    ("no-score", "has no column 'score'; it has query_id, doc_id, bm25_rank"),
])
def test_cli_explains_a_run_it_cannot_read(tmp_path, capsys, layout, message):
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 a 2\n")
    run = tmp_path / "run"
    if layout == "unfinished":  # a killed job leaves only its staging area
        (run / "_staging").mkdir(parents=True)
    elif layout == "no-score":
        run.mkdir()
        pq.write_table(pa.table({"query_id": ["q1"], "doc_id": ["a"], "bm25_rank": [1]}), run / "part-00000.parquet")
    assert main([str(run), "--qrels", str(qrels)]) == 2
    assert message in capsys.readouterr().err
