"""The rerank job end to end on the session's real local Ray, real Parquet files."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from rayrank.jobs.rerank import main
from tests.ray.conftest import candidates, manifest, read_errors, read_output, write_rows


def _check_ranks(table: pa.Table) -> None:
    rows = table.to_pylist()
    by_query: dict[str, list[dict]] = {}
    for row in rows:
        by_query.setdefault(row["query_id"], []).append(row)
    for group in by_query.values():
        group.sort(key=lambda r: r["rank"])
        assert [r["rank"] for r in group] == list(range(1, len(group) + 1))
        assert [(-r["score"], r["doc_id"]) for r in group] == sorted((-r["score"], r["doc_id"]) for r in group)


def test_ranks_per_query_across_files_with_passthrough(tmp_path, job_config):
    rows = candidates(4, 6)
    # Query q0's candidates are split across the two files; one file has several row groups.
    write_rows(tmp_path / "in" / "a.parquet", rows[:15], row_group_size=4)
    write_rows(tmp_path / "in" / "b.parquet", rows[15:])
    out = tmp_path / "out"
    assert main([str(tmp_path / "in"), str(out), "--config", str(job_config())]) == 0
    table = read_output(out)
    assert table.num_rows == 24
    assert table.schema.field("score").type == pa.float32() and table.schema.field("rank").type == pa.int32()
    assert table.column_names[:4] == ["query_id", "doc_id", "score", "rank"] and "bm25_rank" in table.column_names
    assert sorted(table["doc_id"].to_pylist()) == sorted(r["doc_id"] for r in rows)
    _check_ranks(table)
    m = manifest(out)
    assert m["counts"]["rows_in"] == 24 and m["counts"]["queries"] == 4
    assert m["model"]["source"] == "local" and m["scorer"] == "late-interaction"
    # backend: auto (the default) was resolved once by the driver, and the choice recorded
    assert m["backend"] in ("torch", "onnx", "openvino") and m["backend_choice"]["backend"] == m["backend"]
    assert m["config"]["engine"]["backend"] == m["backend"] and m["backend_choice"]["measured"]


def test_top_n_and_nested_layout(tmp_path, job_config):
    nested = [{"query_id": "n1", "query": "what is ray",
               "candidates": [{"doc_id": f"d{i}", "text": f"ray cluster {'data ' * i}"} for i in range(5)]},
              {"query_id": "n2", "query": "fish", "candidates": None},
              {"query_id": "n3", "query": "sea", "candidates": [{"doc_id": "x", "text": ""},
                                                                 {"doc_id": "y", "text": "the sea"}]}]
    write_rows(tmp_path / "nested.parquet", nested)
    out = tmp_path / "out"
    assert main([str(tmp_path / "nested.parquet"), str(out), "--config", str(job_config()), "--top-n", "2"]) == 0
    table = read_output(out)
    assert sorted(zip(table["query_id"].to_pylist(), table["rank"].to_pylist())) == [
        ("n1", 1), ("n1", 2), ("n3", 1)]
    reasons = sorted(read_errors(out)["reason"].to_pylist())
    assert reasons == ["candidates is null", "text is empty"]
    counts = manifest(out)["counts"]
    assert counts["rows_in"] == 8 and counts["rows_scored"] == 6 and counts["rows_rejected"] == 2
    assert counts["rows_written"] == 3


def test_bad_rows_go_to_errors_and_nothing_vanishes(tmp_path, job_config):
    rows = candidates(3, 4)
    bad = [
        {**rows[0], "doc_id": "bad-null-text", "text": None},
        {**rows[0], "doc_id": "bad-empty-query", "query": " \t\n"},
        *({**rows[0], "doc_id": f"bad-blank-{i}", "text": blank} for i, blank in enumerate("\u001e\u00a0\u2028")),
        {**rows[0], "doc_id": "control-character-is-text", "text": "\u0001"},
        {**rows[0], "doc_id": None},
        dict(rows[1]),  # duplicate of rows[1] within the file
    ]
    write_rows(tmp_path / "in" / "a.parquet", rows + bad)
    write_rows(tmp_path / "in" / "b.parquet", [dict(rows[2])])  # duplicate across files
    out = tmp_path / "out"
    assert main([str(tmp_path / "in"), str(out), "--config", str(job_config())]) == 0
    errors = read_errors(out)
    reasons = sorted(errors["reason"].to_pylist())
    dup = [r for r in reasons if r.startswith("duplicate (query_id, doc_id)")]
    assert sorted(set(reasons) - set(dup)) == ["doc_id is null", "query is only white space", "text is null",
                                               "text is only white space"]
    assert reasons.count("text is only white space") == 3
    assert len(dup) == 2 and all("a.parquet" in r for r in dup)  # the first occurrence is kept
    assert '"text": null' in pc.filter(errors["row"], pc.equal(errors["reason"], "text is null"))[0].as_py()
    counts = manifest(out)["counts"]
    assert counts["rows_in"] == 21
    assert counts["rows_in"] == counts["rows_scored"] + counts["rows_rejected"]
    assert counts["rows_rejected"] == 8 and read_output(out).num_rows == 13


def test_missing_column_and_unreadable_file_fail_before_scoring(tmp_path, job_config, capsys):
    write_rows(tmp_path / "in" / "ok.parquet", candidates(1, 2))
    write_rows(tmp_path / "in" / "bad.parquet", [{"query_id": "q", "query": "x", "doc_id": "d", "passage": "t"}])
    out = tmp_path / "out"
    assert main([str(tmp_path / "in"), str(out), "--config", str(job_config())]) == 2
    err = capsys.readouterr().err
    assert "bad.parquet: missing required column(s) text" in err and "columns:" in err
    assert not out.exists()

    (tmp_path / "in" / "bad.parquet").write_bytes(b"not parquet")
    assert main([str(tmp_path / "in"), str(out), "--config", str(job_config())]) == 2
    assert "bad.parquet: not a readable Parquet file" in capsys.readouterr().err

    # Remapping the column through the config makes the same file valid.
    write_rows(tmp_path / "in" / "bad.parquet", [{"query_id": "q", "query": "x", "doc_id": "d", "passage": "t"}])
    config = job_config(columns={"text": "passage"})
    assert main([str(tmp_path / "in" / "bad.parquet"), str(out), "--config", str(config)]) == 0


def test_config_errors_name_the_key(tmp_path, job_config, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine:\n  max_batch_sise: 4\ntop_n: many\n")
    assert main(["in", "out", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "engine.max_batch_sise: unknown key" in err and "top_n: Input should be a valid integer" in err


def test_refuses_other_jobs_output_unless_overwrite(tmp_path, job_config, capsys):
    write_rows(tmp_path / "a.parquet", candidates(2, 3))
    write_rows(tmp_path / "b.parquet", candidates(2, 4, prefix="p"))
    out = tmp_path / "out"
    config = str(job_config())
    assert main([str(tmp_path / "a.parquet"), str(out), "--config", config]) == 0
    assert main([str(tmp_path / "a.parquet"), str(out), "--config", config]) == 0  # same job: nothing to do
    assert "nothing to do" in capsys.readouterr().err
    assert main([str(tmp_path / "b.parquet"), str(out), "--config", config]) == 2
    assert "holds results of a different job" in capsys.readouterr().err
    assert main([str(tmp_path / "b.parquet"), str(out), "--config", config, "--overwrite"]) == 0
    assert read_output(out).num_rows == 8


def test_one_staged_object_per_shard_with_100_buckets_and_phase_accounting(tmp_path, job_config, capsys):
    rows = candidates(40, 5)
    write_rows(tmp_path / "in.parquet", rows, row_group_size=25)  # 8 shards
    out = tmp_path / "out"
    # 2 rows per output file: 100 buckets, so each shard's rows spread over many buckets.
    config = job_config(shard_rows=25, rows_per_output_file=2, cluster={"prefetch_shards": 2})
    assert main([str(tmp_path / "in.parquet"), str(out), "--config", str(config)]) == 0
    m = manifest(out)
    assert m["shards"] == 8 and len(m["files"]) > 8
    assert m["storage"]["staged_objects"] == 8  # was shards x buckets with rows (here ~8 x 25)
    assert m["storage"]["requests"] is None  # counted on object stores only
    phases = m["phases"]
    assert phases["actors"] == 1 and 0 < phases["model_busy"] <= 1
    assert all(phases[p] > 0 for p in ("read_s", "validate_s", "tokenize_s", "model_s", "write_s"))
    assert phases["model_s"] <= phases["actor_s"]
    assert phases["tokens"] > 0 and 1 <= phases["padding_overhead"] < 2
    assert "model busy" in capsys.readouterr().out
    table = read_output(out)
    assert sorted(table["doc_id"].to_pylist()) == sorted(r["doc_id"] for r in rows)
    _check_ranks(table)
