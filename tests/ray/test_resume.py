"""A job killed with SIGKILL and rerun with the same command finishes with every row exactly once."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayrank.jobs.rerank import main
from tests.ray.conftest import candidates, manifest, read_output, start_job, write_rows


@pytest.fixture
def inputs(tmp_path) -> tuple[Path, list[dict]]:
    rows = candidates(12, 25)
    for i in range(3):  # 3 files × 4 row groups of 25 rows → 12 shards
        write_rows(tmp_path / "in" / f"part{i}.parquet", rows[i * 100:(i + 1) * 100], row_group_size=25)
    return tmp_path / "in", rows


def _kill_when(proc, condition, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            raise AssertionError(f"job exited ({proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def _count(folder: Path) -> int:
    return len(list(folder.glob("*.json"))) if folder.exists() else 0


def _assert_only_whole_files(out: Path) -> None:
    """Whatever a reader can see in OUTPUT (non-hidden, outside _staging) is a complete Parquet file."""
    for path in out.rglob("*.parquet"):
        if "_staging" not in path.parts and not path.name.startswith("."):
            pq.read_table(path)


def _assert_exactly_once(out: Path, rows: list[dict]) -> None:
    table = read_output(out)
    pairs = list(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist()))
    assert len(pairs) == len(set(pairs)) == len(rows)
    assert set(pairs) == {(r["query_id"], r["doc_id"]) for r in rows}


@pytest.mark.parametrize("phase", ["scoring", "ranking"])
def test_sigkill_then_rerun_completes_exactly_once(tmp_path, inputs, job_config, capsys, phase):
    folder, rows = inputs
    out = tmp_path / "out"
    config = str(job_config(shard_rows=25, rows_per_output_file=15))  # 12 shards, 20 buckets
    args = [str(folder), str(out), "--config", config]
    proc = start_job(args)
    if phase == "scoring":
        shards = out / "_staging" / "done" / "shards"
        _kill_when(proc, lambda: _count(shards) >= 2, "two shards committed")
        assert _count(shards) < 12, "the job finished scoring before it could be killed"
    else:
        buckets = out / "_staging" / "done" / "buckets"
        _kill_when(proc, lambda: _count(buckets) >= 1, "a bucket committed")
    assert not (out / "_manifest.json").exists()
    _assert_only_whole_files(out)

    assert main(args) == 0
    err = capsys.readouterr().err
    reused = manifest(out)["counts"]["rows_reused"]
    assert reused >= 50 and f"reusing {reused:,} rows" in err
    _assert_exactly_once(out, rows)
    assert not (out / "_staging").exists()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_kill_before_any_commit_then_rerun(tmp_path, inputs, job_config):
    folder, rows = inputs
    out = tmp_path / "out"
    args = [str(folder), str(out), "--config", str(job_config(shard_rows=25))]
    proc = start_job(args)
    _kill_when(proc, lambda: (out / "_staging" / "job.json").exists(), "the job claimed OUTPUT")
    assert main(args) == 0
    _assert_exactly_once(out, rows)
