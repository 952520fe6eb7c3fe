"""`rayrank funnel` on a real local Ray: layout, per-stage outputs, missing indexes built, errors, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from rayrank.evaluate import main as eval_main
from rayrank.jobs.funnel import main
from tests.ray.conftest import manifest, read_errors, read_output, start_job, write_rows
from tests.ray.test_resume import _assert_only_whole_files, _kill_when

WORDS = ["ray", "cluster", "python", "data", "model", "query", "document", "search", "rank", "score", "fish", "sea", "light"]


@pytest.fixture
def corpus(tmp_path) -> Path:
    rows = [{"doc_id": f"d{i}", "title": WORDS[i % 13], "text": " ".join(WORDS[(i * j) % 13] for j in range(1, 6))}
            for i in range(60)]
    rows += [{"doc_id": None, "title": "x", "text": "null id"}, {"doc_id": "d1", "title": "", "text": "again"}]
    return write_rows(tmp_path / "corpus.parquet", rows)


def queries(n: int) -> list[dict]:
    return [{"query_id": f"q{i}", "query": f"{WORDS[i % 13]} {WORDS[(i * 7) % 13]}"} for i in range(n)]


@pytest.fixture
def funnel_config(tmp_path, corpus, tiny_encoder, ray_cluster):
    def make(**overrides) -> Path:
        config = {
            "corpus": {"path": str(corpus)},
            "stages": [
                {"kind": "bm25", "name": "bm25", "k": 20, "stemmer": "none"},
                {"kind": "dense", "name": "dense", "k": 20, "model": str(tiny_encoder),
                 "index": str(tmp_path / "indexes" / "dense")},
                {"kind": "late-interaction", "name": "colbert", "k": 20,
                 "index": str(tmp_path / "indexes" / "li"), "engine": {"model": str(tiny_encoder)}},
                {"kind": "fuse", "name": "fused", "k": 15, "method": "rrf",
                 "weights": {"bm25": 1.0, "dense": 0.5, "colbert": 1.0}},
                {"kind": "rerank", "name": "rerank", "k": 5, "index": str(tmp_path / "indexes" / "li"),
                 "engine": {"scorer": "late-interaction", "model": str(tiny_encoder)}},
            ],
            "cluster": {"address": ray_cluster, "actors": "1,1", "cpus_per_actor": 0.5},
            "shard_queries": 4,
            **overrides,
        }
        path = tmp_path / f"funnel-{len(list(tmp_path.glob('funnel-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return make


def test_funnel_job_writes_every_stage_builds_indexes_and_rejects_bad_queries(tmp_path, funnel_config, capsys):
    rows = queries(10) + [{"query_id": "empty", "query": ""}, {"query_id": None, "query": "ray"},
                          {"query_id": "q1", "query": "duplicate id"}]
    qpath = write_rows(tmp_path / "queries.parquet", rows)
    out = tmp_path / "out"
    assert main([str(qpath), str(out), "--config", str(funnel_config())]) == 0
    m = manifest(out)
    assert m["counts"] == {"rows_in": 13, "queries": 10, "rows_rejected": 3, "queries_reused": 0, "shards": 3}
    assert {n: s["index"] for n, s in m["stages"].items() if "index" in s} == \
        {"dense": "built", "colbert": "built", "rerank": "reused"}
    assert all(s["seconds"] >= 0 and s["rows"] > 0 for s in m["stages"].values())
    final = read_output(out)
    assert final.column_names == ["query_id", "doc_id", "score", "rank", "stage_ranks"]
    assert final.schema.field("stage_ranks").type.names == ["bm25", "dense", "colbert", "fused"]
    per_query = final.group_by("query_id").aggregate([("rank", "max")]).to_pylist()
    assert len(per_query) == 10 and all(r["rank_max"] == 5 for r in per_query)
    fused = read_output(out / "stages" / "fused")
    fused_pairs = set(zip(fused["query_id"].to_pylist(), fused["doc_id"].to_pylist()))
    assert set(zip(final["query_id"].to_pylist(), final["doc_id"].to_pylist())) <= fused_pairs
    ranks = {(r["query_id"], r["doc_id"]): r["rank"] for r in fused.to_pylist()}
    assert all(r["stage_ranks"]["fused"] == ranks[(r["query_id"], r["doc_id"])] for r in final.to_pylist())
    for stage in ("bm25", "dense", "colbert", "fused", "rerank"):
        table = read_output(out / "stages" / stage)
        pairs = list(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist()))
        assert len(pairs) == len(set(pairs)) and table.column_names == ["query_id", "doc_id", "score", "rank"]
    dense_docs = read_output(out / "stages" / "dense")["doc_id"].to_pylist()
    assert "d1" in dense_docs and None not in dense_docs
    reasons = sorted(read_errors(out)["reason"].to_pylist())
    assert reasons[:2] == ["duplicate query_id: first seen at row 1 of " + str(qpath), "query is empty"]
    assert reasons[2] == "query_id is null"
    # the dense index rejected the corpus' bad rows
    dense_manifest = json.loads((tmp_path / "indexes" / "dense" / "_manifest.json").read_text())
    assert dense_manifest["counts"]["docs_indexed"] == 60
    # rayrank eval reads the final ranking and each stage alone
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("".join(f"q{i} 0 d{i} 1\n" for i in range(10)))
    capsys.readouterr()
    assert eval_main([str(out), "--qrels", str(qrels), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run (score)"]["queries"] == 10
    assert eval_main([str(out / "stages" / "bm25"), "--qrels", str(qrels), "--json"]) == 0
    # a rerun of the finished job does nothing
    assert main([str(qpath), str(out), "--config", str(funnel_config())]) == 0
    assert "nothing to do" in capsys.readouterr().err


def test_sigkill_then_rerun_finishes_each_query_exactly_once(tmp_path, funnel_config, capsys):
    qpath = write_rows(tmp_path / "queries.parquet", queries(24))
    out = tmp_path / "out"
    args = [str(qpath), str(out), "--config", str(funnel_config(shard_queries=2))]  # 12 shards
    proc = start_job(args, module="rayrank.jobs.funnel")
    shards = out / "_staging" / "done" / "shards"
    _kill_when(proc, lambda: shards.exists() and len(list(shards.glob("*.json"))) >= 2, "two shards committed",
               timeout=400)
    assert len(list(shards.glob("*.json"))) < 12, "the job finished before it could be killed"
    assert not (out / "_manifest.json").exists()
    _assert_only_whole_files(out)
    assert main(args) == 0
    assert "reusing" in capsys.readouterr().err
    m = manifest(out)
    assert m["counts"]["queries_reused"] >= 4
    for folder in [out] + [out / "stages" / s for s in ("bm25", "dense", "colbert", "fused", "rerank")]:
        table = read_output(folder)
        pairs = list(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist()))
        assert len(pairs) == len(set(pairs))
        assert set(table["query_id"].to_pylist()) == {f"q{i}" for i in range(24)}
    assert not (out / "_staging").exists()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert pq.read_table(out / "part-00000.parquet").num_rows == 10


def test_bad_config_fails_before_any_work(tmp_path, funnel_config, capsys):
    qpath = write_rows(tmp_path / "queries.parquet", queries(2))
    config = yaml.safe_load(funnel_config().read_text())
    config["stages"].insert(0, {"kind": "rerank", "name": "early", "k": 5})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    assert main([str(qpath), str(out), "--config", str(path)]) == 2
    assert "stages.0.kind: a rerank stage reorders" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "indexes").exists()
