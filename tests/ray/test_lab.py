"""The lab on a real local Ray: compare and distill through the batch job, finetune on Ray Train."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rayrank import Reranker
from tests.ray.conftest import candidates, write_rows


@pytest.fixture
def judged(tmp_path):
    rows = candidates(4, 6)
    path = write_rows(tmp_path / "candidates.parquet", rows)
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("".join(f"{r['query_id']} 0 {r['doc_id']} {int(r['bm25_rank'] <= 2)}\n" for r in rows))
    return path, qrels


def test_compare_models_with_themselves_and_each_other(judged, tiny_cross_encoder, tiny_encoder, ray_cluster, capsys):
    from rayrank.jobs.compare import main

    path, qrels = judged
    assert main([str(path), "--qrels", str(qrels), "--model", str(tiny_cross_encoder), "--model",
                 str(tiny_cross_encoder), "--model", f"late-interaction:{tiny_encoder}",
                 "--baseline-column", "bm25_rank", "--address", ray_cluster, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = [m["name"] for m in out["models"]]
    assert names == ["bm25_rank", str(tiny_cross_encoder), str(tiny_cross_encoder), str(tiny_encoder)]
    assert out["models"][0]["ndcg_at_10"] == pytest.approx(1.0)  # the qrels mark BM25's top 2 relevant
    for m in out["models"][1:]:
        assert m["pairs"] == 24 and m["pairs_per_s"] > 0 and 0 <= m["ndcg_at_10"] <= 1
    assert len(out["agreement"]) == 6  # baseline + 3 models, every two
    same = next(p for p in out["agreement"] if p["a"].startswith("[1]") and p["b"].startswith("[2]"))
    assert same["kendall_tau"] == 1.0 and same["top3_overlap"] == 1.0
    ce_vs_li = next(p for p in out["agreement"] if p["a"].startswith("[1]") and p["b"].startswith("[3]"))
    assert -1 <= ce_vs_li["kendall_tau"] <= 1 and ce_vs_li["queries"] == 4


def test_compare_same_model_twice_agrees_perfectly(judged, tiny_cross_encoder, ray_cluster, tmp_path):
    from rayrank.config import ClusterConfig
    from rayrank.jobs.compare import compare
    from rayrank.lab.config import ModelSpec

    path, qrels = judged
    cluster = ClusterConfig(address=ray_cluster, actors=(1, 1), cpus_per_actor=0.5)
    result = compare(str(path), str(qrels), [ModelSpec(str(tiny_cross_encoder)), ModelSpec.parse(
        f"cross-encoder:{tiny_cross_encoder}")], {"backend": "torch"}, cluster, str(tmp_path / "work"))
    (pair,) = result["agreement"]
    assert pair["kendall_tau"] == 1.0 and pair["top3_overlap"] == 1.0 and pair["top5_overlap"] == 1.0


def test_finetune_on_ray_train_with_two_workers(tmp_path, tiny_cross_encoder, ray_cluster, capsys):
    from rayrank.jobs.finetune import main

    words = "ray cluster python data model query document search".split()
    rows = [{"query": f"what is {w}", "text": f"{w} {w}" if y else f"{words[(i + 3) % 8]} only", "label": y}
            for i, w in enumerate(words * 2) for y in (1.0, 0.0)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    out = tmp_path / "model"
    assert main([str(out), "--pairs", str(tmp_path / "pairs.parquet"), "--model", str(tiny_cross_encoder),
                 "--workers", "2", "--cpus-per-worker", "0.5", "--batch-size", "4", "--epochs", "1",
                 "--address", ray_cluster]) == 0
    summary = json.loads((out / "training_summary.json").read_text())
    # 32 pairs, 2 workers × 4 per step: each worker sees half of every epoch.
    assert summary["workers"] == 2 and summary["steps"] == 4
    assert Reranker(str(out)).score("what is ray", ["ray ray", "fish"]).shape == (2,)


def test_distill_teacher_labels_with_the_job_and_students_load(tmp_path, tiny_cross_encoder, tiny_encoder,
                                                             ray_cluster, capsys):
    from rayrank.jobs.distill import main

    path = write_rows(tmp_path / "pairs.parquet", candidates(3, 5))
    labels = tmp_path / "labels.parquet"
    common = ["--teacher", f"late-interaction:{tiny_encoder}", "--candidates", str(path), "--labels", str(labels),
              "--address", ray_cluster, "--max-steps", "2", "--batch-size", "4"]
    assert main([str(tmp_path / "ce"), "--model", str(tiny_cross_encoder), *common]) == 0
    teacher = Reranker(str(tiny_encoder), scorer="late-interaction")
    table = pq.read_table(labels)
    assert table.num_rows == 15
    expected = teacher.score_pairs(table["query"].to_pylist(), table["text"].to_pylist()).scores
    assert table["teacher_score"].to_numpy() == pytest.approx(expected, rel=1e-4, abs=1e-4)
    summary = json.loads((tmp_path / "ce" / "training_summary.json").read_text())
    assert summary["loss"] == "mse" and summary["pairs_labelled"] == 15 and summary["steps"] == 2
    assert Reranker(str(tmp_path / "ce")).score("what is ray", ["ray"]).shape == (1,)
    # The bi-encoder student reuses the kept labels (no second teacher job) and loads as late interaction.
    args = [str(tmp_path / "li"), "--model", str(tiny_encoder), "--student-kind", "late-interaction", *common]
    assert main(args) == 0
    assert "late-interaction student" in capsys.readouterr().out
    assert Reranker(str(tmp_path / "li"), scorer="late-interaction").score("what is ray", ["ray"]).shape == (1,)
    # Dense students (the funnel's dense stage model), both losses, from the same kept labels.
    from rayrank.funnel.dense import DenseEncoder

    before = DenseEncoder(str(tiny_encoder)).encode(["what is ray"])
    for loss in ("mse", "margin-mse"):
        out = tmp_path / f"dense-{loss}"
        assert main([str(out), "--model", str(tiny_encoder), "--student-kind", "dense", "--loss", loss, *common]) == 0
        assert "dense student" in capsys.readouterr().out
        summary = json.loads((out / "training_summary.json").read_text())
        assert summary["loss"] == {"mse": "cosine-mse", "margin-mse": "margin-mse"}[loss] and summary["steps"] == 2
        after = DenseEncoder(str(out)).encode(["what is ray"])
        assert after.shape == before.shape and not np.allclose(after, before)  # trained, and loads as a dense model


def test_distill_listwise_student_of_an_indexed_teacher_fused_with_bm25_and_gold(
        tmp_path, tiny_cross_encoder, tiny_encoder, ray_cluster, capsys):
    from rayrank.jobs.distill import main
    from rayrank.jobs.index import main as index_main

    words = "ray cluster python data model query document search rank score fish sea light".split()
    docs = [{"doc_id": f"d{i}", "text": " ".join(words[(i * 5 + j) % len(words)] for j in range(3 + i % 4))}
            for i in range(24)]
    write_rows(tmp_path / "corpus" / "c.parquet", docs)
    write_rows(tmp_path / "queries.parquet", [{"query_id": f"q{i}", "query": f"what is {words[i]} {words[i + 1]}"}
                                              for i in range(4)])
    (tmp_path / "qrels.txt").write_text("q0 0 d0 1\nq1 0 d9 2\nq2 0 nowhere 1\n")
    (tmp_path / "index.yaml").write_text(json.dumps({"engine": {"model": str(tiny_encoder)},
                                                     "cluster": {"address": ray_cluster, "actors": "1,1"}}))
    assert index_main([str(tmp_path / "corpus"), str(tmp_path / "ix"), "--config", str(tmp_path / "index.yaml")]) == 0

    labels = tmp_path / "labels.parquet"
    common = ["--teacher", f"late-interaction:{tiny_encoder}", "--queries", str(tmp_path / "queries.parquet"),
              "--corpus", str(tmp_path / "corpus" / "c.parquet"), "--depth", "6", "--address", ray_cluster]
    assert main([str(tmp_path / "ce"), "--model", str(tiny_cross_encoder), *common, "--teacher-index",
                 str(tmp_path / "ix"), "--loss", "listwise", "--blend", "bm25_score=0.5", "--qrels",
                 str(tmp_path / "qrels.txt"), "--labels", str(labels), "--max-steps", "2", "--batch-size", "2"]) == 0
    table = pq.read_table(labels)
    assert {"bm25_score", "teacher_score"} <= set(table.column_names)  # the blended column is kept
    bm25 = table.filter(pc.equal(table["query_id"], "q0"))["bm25_score"].to_pylist()
    assert bm25 == sorted(bm25, reverse=True) and len(bm25) == 6  # BM25's top 6, best first
    plain = Reranker(str(tiny_encoder), scorer="late-interaction")
    expected = plain.score_pairs(table["query"].to_pylist(), table["text"].to_pylist()).scores
    assert table["teacher_score"].to_numpy() == pytest.approx(expected, rel=2e-3, abs=2e-3)  # fp16 index
    judged = {("q0", "d0"), ("q1", "d9")}
    summary = json.loads((tmp_path / "ce" / "training_summary.json").read_text())
    assert summary["loss"] == "listwise" and summary["blend"] == {"bm25_score": 0.5} and summary["steps"] == 2
    assert summary["relevant_pairs"] == sum((q, d) in judged for q, d in zip(table["query_id"].to_pylist(),
                                                                               table["doc_id"].to_pylist()))
    assert Reranker(str(tmp_path / "ce")).score("what is ray", ["ray", "fish"]).shape == (2,)
    capsys.readouterr()
    # A blend column the pairs lack is named before any teacher job runs.
    assert main([str(tmp_path / "ce2"), *common, "--blend", "bm25_scor=0.3"]) == 2
    assert "lacks column(s) bm25_scor" in capsys.readouterr().err
