"""The rerank job with a score cache across runs (`--cache DIR`): hits, misses, corrupt segments, a killed writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayrank.jobs.rerank import main
from tests.ray.conftest import candidates, manifest, read_output, start_job, write_rows
from tests.ray.test_resume import _assert_exactly_once, _kill_when


def _unique_rows(n_queries: int, per_query: int) -> list[dict]:
    """Candidates whose (query, text) pairs are all different."""
    return [{**row, "query": f"{row['query']} {row['query_id']}", "text": f"{row['text']} {row['doc_id']}"}
            for row in candidates(n_queries, per_query)]


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([("query_id", "ascending"), ("doc_id", "ascending")])


def _segments(cache: Path) -> list[Path]:
    return sorted(p for p in cache.glob("*/b=*/*.parquet") if not p.name.startswith("."))


def _same_output(a: Path, b: Path, exact: bool = True) -> None:
    left, right = _sorted(read_output(a)), _sorted(read_output(b))
    assert left.drop_columns(["score"]).equals(right.drop_columns(["score"]))
    if exact:
        assert left["score"].equals(right["score"])
    else:  # scored in other batches: float32 rounding may differ
        np.testing.assert_allclose(left["score"].to_numpy(), right["score"].to_numpy(), rtol=0, atol=1e-5)


def test_second_run_scores_nothing_and_writes_the_same_output(tmp_path, job_config, capsys):
    rows = candidates(6, 8)
    rows[1] = {**rows[1], "text": rows[0]["text"]}  # q0: two documents with one text, scored once
    write_rows(tmp_path / "in.parquet", rows)
    cache, config = tmp_path / "cache", str(job_config())
    assert main([str(tmp_path / "in.parquet"), str(tmp_path / "night1"), "--config", config, "--cache", str(cache)]) == 0
    first = manifest(tmp_path / "night1")["counts"]
    pairs = len({(r["query"], r["text"]) for r in rows})
    assert first["cache_hits"] + first["cache_repeats"] + first["pairs_scored"] == first["rows_scored"] == len(rows)
    assert first["cache_repeats"] >= 1 and pairs <= first["pairs_scored"] < len(rows)
    assert len(list(cache.glob("*/fingerprint.json"))) == 1 and _segments(cache)
    capsys.readouterr()

    assert main([str(tmp_path / "in.parquet"), str(tmp_path / "night2"), "--config", config, "--cache", str(cache)]) == 0
    m = manifest(tmp_path / "night2")
    assert m["counts"]["pairs_scored"] == 0 and m["counts"]["cache_hits"] == len(rows)
    assert m["cache"]["dir"] == str(cache) and m["cache"]["corrupt_segments"] == []
    assert f"{len(rows):,} pairs from the cache" in capsys.readouterr().out
    _same_output(tmp_path / "night1", tmp_path / "night2")


def test_a_scoring_setting_misses_and_a_speed_setting_hits(tmp_path, job_config):
    rows = _unique_rows(4, 5)
    write_rows(tmp_path / "in.parquet", rows)
    cache, config = tmp_path / "cache", str(job_config())
    run = lambda out, *flags: main([str(tmp_path / "in.parquet"), str(tmp_path / out), "--config", config,
                                    "--cache", str(cache), *flags])
    assert run("a") == 0
    assert run("b", "--max-length", "16") == 0  # another model setting: its own fingerprint, every pair a miss
    b = manifest(tmp_path / "b")
    assert b["counts"]["cache_hits"] == 0 and b["counts"]["pairs_scored"] == len(rows)
    assert b["cache"]["fingerprint"] != manifest(tmp_path / "a")["cache"]["fingerprint"]
    assert len(list(cache.glob("*/fingerprint.json"))) == 2
    assert run("c", "--max-tokens-per-batch", "512") == 0  # batching changes speed, not scores: hits
    assert manifest(tmp_path / "c")["counts"]["cache_hits"] == len(rows)


def test_corrupt_segment_is_skipped_and_its_pairs_rescored(tmp_path, job_config):
    rows = _unique_rows(5, 6)
    write_rows(tmp_path / "in.parquet", rows)
    cache, config = tmp_path / "cache", str(job_config())
    assert main([str(tmp_path / "in.parquet"), str(tmp_path / "a"), "--config", config, "--cache", str(cache)]) == 0
    damaged = _segments(cache)[0]
    entries = pq.read_table(damaged).num_rows
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the checksum in its name no longer matches
    damaged.write_bytes(bytes(data))

    assert main([str(tmp_path / "in.parquet"), str(tmp_path / "b"), "--config", config, "--cache", str(cache)]) == 0
    m = manifest(tmp_path / "b")
    assert m["cache"]["corrupt_segments"] == [str(damaged)]
    assert m["counts"]["pairs_scored"] == entries and m["counts"]["cache_hits"] == len(rows) - entries
    _same_output(tmp_path / "a", tmp_path / "b", exact=False)


def test_sigkill_while_writing_the_cache_then_rerun_gives_the_cold_output(tmp_path, job_config):
    rows = _unique_rows(12, 25)
    for i in range(3):  # 12 shards of 25 rows
        write_rows(tmp_path / "in" / f"part{i}.parquet", rows[i * 100:(i + 1) * 100], row_group_size=25)
    cache, out = tmp_path / "cache", tmp_path / "out"
    config = str(job_config(shard_rows=25))
    args = [str(tmp_path / "in"), str(out), "--config", config, "--cache", str(cache)]
    proc = start_job(args)
    shards = out / "_staging" / "done" / "shards"
    _kill_when(proc, lambda: len(_segments(cache)) >= 3, "the cache's first segments")
    assert len(list(shards.glob("*.json"))) < 12, "the job finished scoring before it could be killed"
    # What a writer killed mid-segment leaves: a hidden temporary file, which no reader opens.
    bucket = _segments(cache)[0].parent
    (bucket / f".{_segments(cache)[0].name}.tmp-deadbeef").write_bytes(b"PAR1 torn")

    assert main(args) == 0
    _assert_exactly_once(out, rows)
    m = manifest(out)
    assert m["counts"]["rows_reused"] + m["counts"]["cache_hits"] > 0  # the killed run's work was used
    assert m["cache"]["corrupt_segments"] == []
    assert main([str(tmp_path / "in"), str(tmp_path / "cold"), "--config", config]) == 0
    # Same ids and ranks; scores to float32 rounding (a shard with hits scores its misses in other batches).
    _same_output(out, tmp_path / "cold", exact=False)


def test_bad_cache_settings_are_refused_before_ray_starts(tmp_path, job_config, capsys):
    write_rows(tmp_path / "in.parquet", candidates(1, 2))
    config = job_config(cache={"dir": str(tmp_path / "cache"), "max_bytes": 0})
    assert main([str(tmp_path / "in.parquet"), str(tmp_path / "out"), "--config", str(config)]) == 2
    assert "cache.max_bytes: Input should be greater than 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_retention_prunes_after_the_job(tmp_path, job_config):
    rows = _unique_rows(3, 4)
    write_rows(tmp_path / "in.parquet", rows)
    cache = tmp_path / "cache"
    keep = str(job_config(cache={"dir": str(cache), "max_age_days": 30}))
    assert main([str(tmp_path / "in.parquet"), str(tmp_path / "a"), "--config", keep]) == 0
    report = manifest(tmp_path / "a")["cache"]["prune"]
    assert report["entries_kept"] == len(rows) and report["entries_dropped"] == 0
    assert len(_segments(cache)) == len({p.parent for p in _segments(cache)})  # compacted: one segment a bucket
    tiny = str(job_config(cache={"dir": str(cache), "max_bytes": 1}))  # nothing fits: every entry goes
    assert main([str(tmp_path / "in.parquet"), str(tmp_path / "b"), "--config", tiny]) == 0
    assert manifest(tmp_path / "b")["cache"]["prune"]["entries_dropped"] == len(rows) and not _segments(cache)
    assert main([str(tmp_path / "in.parquet"), str(tmp_path / "c"), "--config", keep]) == 0
    assert manifest(tmp_path / "c")["counts"]["pairs_scored"] == len(rows)
