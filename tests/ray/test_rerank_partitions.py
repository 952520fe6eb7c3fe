"""The rerank job over a date-partitioned INPUT (`--partitions new|KEY=VALUE`, `--overwrite-partition`), on disk
and on S3, killed mid-job and between a partition's publish and its ledger entry."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayrank.io.storage import storage_options
from rayrank.io.trec import read_run
from rayrank.jobs.export import main as export_main
from rayrank.jobs.rerank import main
from tests.ray.conftest import REPO, candidates, start_job, write_rows
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
    err = capsys.readouterr().err
    assert "has no partition dt=2026-12-09; it has dt=2026-12-05, dt=2026-12-06, dt=2026-12-07" in err
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


# A driver that dies by SIGKILL the moment it would write a ledger entry: after the partition's publish.
_KILLED_BEFORE_THE_LEDGER = """
import os, signal, sys
import rayrank.jobs.rerank as rerank
write = rerank.write_json_atomic
def crash(data, fs, path):
    if "/_ledger/" in path:
        os.kill(os.getpid(), signal.SIGKILL)
    return write(data, fs, path)
rerank.write_json_atomic = crash
sys.exit(rerank.main(sys.argv[1:]))
"""


def test_sigkill_between_publish_and_ledger_then_rerun_keeps_the_partition_once(tmp_path, job_config, capsys):
    logs, out = tmp_path / "logs", tmp_path / "out"
    nights = {f"dt=2026-12-0{d}": candidates(3, 5, prefix=f"n{d}q") for d in (5, 6)}
    for name, rows in nights.items():
        write_rows(logs / name / "part0.parquet", rows)
    args = [str(logs), str(out), "--config", str(job_config()), "--partitions", "new"]
    killed = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_THE_LEDGER, *args], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    published = json.loads((out / "dt=2026-12-05" / "_manifest.json").read_text())
    assert not (out / "_ledger").exists() and not (out / "dt=2026-12-06").exists()
    (out / ".dt=2026-12-05.tmp-deadbeef").mkdir()  # what a publish killed mid-copy leaves
    (out / ".dt=2026-12-05.tmp-deadbeef" / "part-00000.parquet").write_bytes(b"PAR1 torn")

    assert main(args) == 0
    err = capsys.readouterr().err
    assert "partitions: 2 to run (dt=2026-12-05, dt=2026-12-06), 0 published" in err
    assert "already holds this job's finished results" in err  # the killed run's job, not scored again
    for name, rows in nights.items():
        _assert_exactly_once(out / name, rows)
    assert sorted(_ledger(out)) == sorted(nights)
    assert _ledger(out)["dt=2026-12-05"]["job_id"] == published["job_id"]
    assert not list(out.glob("_partitions/*")) and not [p for p in out.iterdir() if p.name.startswith(".")]


def test_partitions_on_s3_new_overwrite_and_a_trec_run_out_and_back(tmp_path, s3_endpoint, job_config):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="nightly")

    def put(key: str, rows: list[dict]) -> None:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buffer)
        s3.put_object(Bucket="nightly", Key=key, Body=buffer.getvalue())

    def objects(prefix: str) -> dict[str, str]:
        listed = s3.list_objects_v2(Bucket="nightly", Prefix=prefix).get("Contents", [])
        return {o["Key"]: o["ETag"] + str(o["LastModified"]) for o in listed}

    def pairs(prefix: str) -> set[tuple[str, str]]:
        table = pa.concat_tables([pq.read_table(io.BytesIO(s3.get_object(Bucket="nightly", Key=k)["Body"].read()))
                                  for k in objects(prefix) if k.rsplit("/", 1)[-1].startswith("part-")])
        return set(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist()))

    nights = {f"dt=2026-12-0{d}": candidates(3, 4, prefix=f"n{d}q") for d in (5, 6)}
    for name, rows in nights.items():
        put(f"logs/{name}/part0.parquet", rows)
    args = ["s3://nightly/logs", "s3://nightly/out", "--config", str(job_config())]
    assert main([*args, "--partitions", "new"]) == 0
    for name, rows in nights.items():
        assert pairs(f"out/{name}/") == {(r["query_id"], r["doc_id"]) for r in rows}
    ledger = [k.rsplit("/", 1)[-1] for k in objects("out/_ledger/")]
    assert sorted(ledger) == ["dt=2026-12-05.json", "dt=2026-12-06.json"]
    assert not objects("out/_partitions/") and not [k for k in objects("out/") if "_staging" in k]

    untouched = objects("out/dt=2026-12-05/")
    replaced = candidates(2, 2, prefix="late")
    put("logs/dt=2026-12-06/part0.parquet", replaced)
    assert main([*args, "--partitions", "dt=2026-12-06", "--overwrite-partition"]) == 0
    assert pairs("out/dt=2026-12-06/") == {(r["query_id"], r["doc_id"]) for r in replaced}
    assert objects("out/dt=2026-12-05/") == untouched

    # One partition out as a TREC run on S3 and read back: the same ids, ranks and float32 scores.
    assert export_main(["s3://nightly/out/dt=2026-12-05", "--out", "s3://nightly/runs/05.trec"]) == 0
    url = "s3://nightly/runs/05.trec"
    back = read_run(url, storage_options(None, url))
    table = pq.read_table(io.BytesIO(s3.get_object(Bucket="nightly", Key=next(
        k for k in untouched if k.rsplit("/", 1)[-1].startswith("part-")))["Body"].read()))
    want = {(q, d): (r, np.float32(s)) for q, d, r, s in zip(
        *(table[c].to_pylist() for c in ("query_id", "doc_id", "rank", "score")))}
    got = {(q, d): (r, np.float32(s)) for q, d, r, s in zip(
        *(back[c].to_pylist() for c in ("query_id", "doc_id", "first_rank", "first_score")))}
    assert got == want and len(want) == len(nights["dt=2026-12-05"])
