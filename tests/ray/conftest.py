"""Helpers for job tests: write Parquet inputs, run the job in-process or as a killable subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def write_rows(path: Path, rows: list[dict], **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, **kwargs)
    return path


def candidates(n_queries: int, per_query: int, prefix: str = "q") -> list[dict]:
    words = "ray cluster python data model query document search rank score fish sea light".split()
    return [{"query_id": f"{prefix}{q}", "query": f"what is {words[q % len(words)]}",
             "doc_id": f"{prefix}{q}-d{d}", "text": " ".join(words[(q + d + i) % len(words)] for i in range(3 + d % 5)),
             "bm25_rank": d + 1}
            for q in range(n_queries) for d in range(per_query)]


def read_output(out: Path) -> pa.Table:
    return pq.read_table(out, partitioning=None) if out.is_file() else pa.concat_tables(
        [pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])


def read_errors(out: Path) -> pa.Table:
    files = sorted((out / "_errors").glob("*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in files]) if files else pa.table({"reason": pa.array([], pa.string())})


@pytest.fixture
def job_config(tmp_path, tiny_encoder, ray_cluster):
    """Write a job YAML for a tiny late-interaction model that joins the session's Ray cluster."""

    def make(**overrides) -> Path:
        config = {"engine": {"model": str(tiny_encoder), "scorer": "late-interaction"},
                  "cluster": {"address": ray_cluster, "actors": "1,1", "cpus_per_actor": 0.5}}
        for key, value in overrides.items():
            if isinstance(value, dict):
                config.setdefault(key, {}).update(value)
            else:
                config[key] = value
        path = tmp_path / f"job-{len(list(tmp_path.glob('job-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return make


def start_job(args: list[str], module: str = "rayrank.jobs.rerank") -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def manifest(out: Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())


@pytest.fixture
def s3_endpoint(moto_server):
    return moto_server.endpoint
