"""The rerank job over a date-partitioned INPUT (`--partitions new|KEY=VALUE`, `--overwrite-partition`)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from rayrank.jobs.rerank import main
from tests.ray.conftest import candidates, start_job, write_rows
from tests.ray.test_resume import _assert_exactly_once, _kill_when


def _pairs(folder) -> set[tuple[str, str]]:
    table = pq.read_table(folder, partitioning=None)
    return set(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist()))


def _ledger(out) -> dict[str, dict]:
    [fingerprint] = list((out / "_ledger").iterdir())
    return {p.stem: json.loads(p.read_text()) for p in fingerprint.glob("*.json")}


def test_new_then_named_then_overwrite(tmp_path, job_config, capsys):
    logs, out = tmp_path / "logs", tmp_path / "out"
    nights = {f"dt=2026-12-0{d}": candidates(3, 4, prefix=f"n{d}q") for d in (5, 6)}
    for name, rows in nights.items():
        write_rows(logs / name / "part0.parquet", rows)
    args = [str(logs), str(out), "--config", str(job_config())]
    assert main([*args, "--partitions", "new"]) == 0
    assert "partitions: 2 to run (dt=2026-12-05, dt=2026-12-06), 0 published" in capsys.readouterr().err
    for name, rows in nights.items():
        assert _pairs(out / name) == {(r["query_id"], r["doc_id"]) for r in rows}
        assert (out / name / "_manifest.json").exists()
    assert sorted(_ledger(out)) == ["dt=2026-12-05", "dt=2026-12-06"] and not list(out.glob("_partitions/*"))
    whole = pq.read_table(out, partitioning="hive")  # _ledger and _partitions are not data
    assert whole.num_rows == 24 and set(whole["dt"].to_pylist()) == {"2026-12-05", "2026-12-06"}

    nights["dt=2026-12-07"] = candidates(2, 3, prefix="n7q")
    write_rows(logs / "dt=2026-12-07" / "part0.parquet", nights["dt=2026-12-07"])
    before = {p: p.stat().st_mtime_ns for p in (out / "dt=2026-12-05").rglob("*")}
    assert main([*args, "--partitions", "new"]) == 0
    assert "partitions: 1 to run (dt=2026-12-07), 2 published" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in (out / "dt=2026-12-05").rglob("*")} == before  # untouched
    assert main([*args, "--partitions", "new"]) == 0
    assert "partitions: 0 to run (none)" in capsys.readouterr().err

    assert main([*args, "--partitions", "dt=2026-12-06"]) == 2
    assert "pass --overwrite-partition" in capsys.readouterr().err
    assert main([*args, "--partitions", "dt=2026-12-09"]) == 2
    assert "has no partition dt=2026-12-09; it has dt=2026-12-05, dt=2026-12-06, dt=2026-12-07" in capsys.readouterr().err
    replaced = candidates(1, 2, prefix="late")
    write_rows(logs / "dt=2026-12-06" / "part0.parquet", replaced)
    assert main([*args, "--partitions", "dt=2026-12-06", "--overwrite-partition"]) == 0
    assert _pairs(out / "dt=2026-12-06") == {(r["query_id"], r["doc_id"]) for r in replaced}
    assert {p: p.stat().st_mtime_ns for p in (out / "dt=2026-12-05").rglob("*")} == before
    assert _ledger(out)["dt=2026-12-06"]["counts"]["rows_in"] == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_overwrite_partition_needs_a_named_partition(tmp_path, job_config, capsys):
    assert main(["in", "out", "--config", str(job_config()), "--partitions", "new", "--overwrite-partition"]) == 2
    assert "overwrite_partition replaces one published partition" in capsys.readouterr().err


def test_sigkill_then_rerun_publishes_each_partition_once(tmp_path, job_config):
    logs, out = tmp_path / "logs", tmp_path / "out"
    nights = {f"dt=2026-12-0{d}": candidates(12, 25, prefix=f"n{d}q") for d in (5, 6)}
    for name, rows in nights.items():
        for i in range(3):
            write_rows(logs / name / f"part{i}.parquet", rows[i * 100:(i + 1) * 100], row_group_size=25)
    args = [str(logs), str(out), "--config", str(job_config(shard_rows=25)), "--partitions", "new"]
    proc = start_job(args)
    shards = out / "_partitions" / "dt=2026-12-05" / "_staging" / "done" / "shards"
    _kill_when(proc, lambda: len(list(shards.glob("*.json"))) >= 2, "two shards of the first partition")
    assert not (out / "dt=2026-12-05").exists()
    assert main(args) == 0
    for name, rows in nights.items():
        _assert_exactly_once(out / name, rows)
    assert sorted(_ledger(out)) == sorted(nights)
    assert _ledger(out)["dt=2026-12-05"]["counts"]["rows_reused"] >= 50
