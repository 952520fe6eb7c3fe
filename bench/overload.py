"""Overload: the default `rayrank serve` app under more closed-loop clients than it can serve, with
admission by pair count only (before) and by expected wait (after).

`hey` (the HTTP load generator; `apt-get install hey`) runs `--clients` closed-loop clients for
`--seconds` against `/v1/rerank`, each request a TREC-DL20 query with its first 20 BM25 candidates
(../shared/data/trec-dl20). The app is the packaged default config (bundled all-MiniLM-L6-v2, late
interaction, 1-2 replicas of one CPU) on a local Ray. "before" sets `admission.max_queue_wait_s` so
high that only `max_pending_pairs: 4096` bounds a replica's queue (what the service did before);
"after" is the default, 3 s. Reported per run: status counts, and p50/p99/max of the accepted
(200) requests and of the refused ones, from hey's per-request CSV.

    flock /tmp/rayrank-bench.lock python bench/overload.py            # about 3 minutes
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import requests
import yaml
from _common import DL20, load_average, load_candidates, skip_message, table

from rayrank.ray_app.cli import DEFAULT_CONFIG

SETTINGS = {"before": {"max_queue_wait_s": 1e9}, "after": {}}


def body(docs: int) -> bytes:
    rows = load_candidates(DL20 / "candidates.parquet").to_pylist()
    first = rows[0]["query_id"]
    texts = [r["text"] for r in rows if r["query_id"] == first][:docs]
    return json.dumps({"query": rows[0]["query"], "documents": texts}).encode()


def run_app(setting: dict, port: int, folder: Path) -> subprocess.Popen:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["applications"][0]["args"]["admission"].update(setting)
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "rayrank", "serve", "--config", str(path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=folder)
    assert proc.stdout.readline().startswith("rayrank serving"), "the app did not start"
    while requests.get(f"http://127.0.0.1:{port}/health", timeout=30).status_code != 200:
        time.sleep(0.5)
    return proc


def percentiles(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return (float("nan"),) * 3
    return (float(np.percentile(values, 50)), float(np.percentile(values, 99)), max(values))


def load(port: int, payload: Path, clients: int, seconds: int) -> dict:
    out = subprocess.run(["hey", "-z", f"{seconds}s", "-c", str(clients), "-m", "POST", "-T", "application/json",
                          "-D", str(payload), "-t", "120", "-o", "csv", f"http://127.0.0.1:{port}/v1/rerank"],
                         capture_output=True, text=True, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    statuses = Counter(int(r["status-code"]) for r in rows)
    ok = [float(r["response-time"]) for r in rows if r["status-code"] == "200"]
    refused = [float(r["response-time"]) for r in rows if r["status-code"] != "200"]
    (p50, p99, top), (r50, r99, _) = percentiles(ok), percentiles(refused)
    return {"responses": len(rows), "statuses": " ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
            "ok/s": len(ok) / seconds, "ok p50 s": p50, "ok p99 s": p99, "ok max s": top,
            "refused p50 s": r50, "refused p99 s": r99}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--port", type=int, default=8123)
    opts = parser.parse_args(argv)
    if not (DL20 / "candidates.parquet").is_file():
        print(skip_message(DL20))
        return 0
    if shutil.which("hey") is None:
        print("hey is not installed (apt-get install hey); skipping")
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        payload = folder / "body.json"
        payload.write_bytes(body(opts.docs))
        for name, setting in SETTINGS.items():
            print(f"{name}: load average {load_average()}", flush=True)
            proc = run_app(setting, opts.port, folder)
            try:
                rows.append({"admission": name, **load(opts.port, payload, opts.clients, opts.seconds)})
            finally:
                proc.terminate()
                proc.wait(timeout=120)
            print(table(rows[-1:], floats="{:.2f}"), flush=True)
    print(f"\n{opts.clients} closed-loop clients (hey), {opts.seconds} s per run, {opts.docs} passages a request; "
          f"load average at the end {load_average()}\n")
    print(table(rows, floats="{:.2f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
