"""Online serving: throughput and latency at 1, 4 and 16 concurrent clients, batching on and off,
and the serving overhead against the in-process engine on the same pairs.

Requests are TREC-DL20 queries with their first `--docs` BM25 candidates
(../shared/data/trec-dl20/candidates.parquet), scored by the bundled all-MiniLM-L6-v2 as a
late-interaction scorer. Each client sends its next request when the previous one answers
(closed loop) for `--seconds` per level. Batching off is `max_batch_size: 1`.

Serving overhead = the best pairs/s of the served app / pairs/s of `Reranker.score_pairs` in this
process on the pairs of one full batch (`--max-batch-size` requests), measured before, between
and after the Serve runs; the best one counts. The app runs `--replicas` replicas (default 2, as
the default config's autoscaler reaches under load) sharing the CPUs; the in-process engine gets
every CPU to itself, with the same engine settings.

    python bench/serve.py                       # about 5 minutes on 2 CPU cores
    python bench/serve.py --seconds 10 --clients 1,4 --docs 20
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _common import DL20, MINILM, load_average, load_candidates, skip_message, table


def requests_from(candidates, docs: int) -> list[tuple[str, list[str]]]:
    """One request per query: the query and its first `docs` candidates."""
    by_query: dict[str, tuple[str, list[str]]] = {}
    for row in candidates.to_pylist():
        query, texts = by_query.setdefault(row["query_id"], (row["query"], []))
        if len(texts) < docs:
            texts.append(row["text"])
    return list(by_query.values())


def in_process_pairs_per_s(engine_config, requests: list[tuple[str, list[str]]], repeats: int = 2) -> float:
    """Pairs/s of one `score_pairs` call over every pair of `requests`: what a full Serve batch runs."""
    import rayrank

    reranker = rayrank.Reranker.from_config(engine_config)
    queries = [q for q, docs in requests for _ in docs]
    documents = [d for _, docs in requests for d in docs]
    reranker.score_pairs(queries[:64], documents[:64])  # warm up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        reranker.score_pairs(queries, documents)
        best = min(best, time.perf_counter() - started)
    return len(queries) / best


def closed_loop(url: str, requests: list[tuple[str, list[str]]], clients: int, seconds: float) -> dict:
    """`clients` threads each sending its next request as soon as the last one answers."""
    import requests as http

    def client(offset: int) -> tuple[list[float], int, int]:
        session, latencies, pairs, errors = http.Session(), [], 0, 0
        deadline, i = time.perf_counter() + seconds, offset
        while time.perf_counter() < deadline:
            query, docs = requests[i % len(requests)]
            i += clients
            started = time.perf_counter()
            response = session.post(url, json={"query": query, "documents": docs}, timeout=300)
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
                pairs += len(docs)
            else:
                errors += 1
        return latencies, pairs, errors

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - started
    latencies = np.concatenate([r[0] for r in results]) * 1000
    return {"requests/s": len(latencies) / elapsed, "pairs/s": sum(r[1] for r in results) / elapsed,
            "p50 ms": float(np.percentile(latencies, 50)), "p99 ms": float(np.percentile(latencies, 99)),
            "errors": sum(r[2] for r in results)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20, help="documents per request")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per level")
    parser.add_argument("--max-batch-size", type=int, default=16, help="requests per batch with batching on")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs: the in-process engine's torch "
                        "threads, and Ray's CPUs shared by the replicas")
    parser.add_argument("--replicas", type=int, default=2, help="replicas, each with cpus / replicas threads")
    opts = parser.parse_args(argv)
    candidates = load_candidates(DL20 / "candidates.parquet")
    if candidates is None:
        print(skip_message(DL20))
        return 0

    import ray
    from ray import serve

    from rayrank.config import EngineConfig
    from rayrank.ray_app.app import RerankDeployment
    from rayrank.ray_app.config import ServeArgs

    requests = requests_from(candidates, opts.docs)
    engine = EngineConfig(model=MINILM, scorer="late-interaction", threads=opts.cpus)
    replica_engine = engine.model_copy(update={"threads": max(1, opts.cpus // opts.replicas)})
    print(f"{len(requests)} requests of {opts.docs} documents; load average {load_average()} at start", flush=True)
    batch = requests[:opts.max_batch_size]
    baseline = [in_process_pairs_per_s(engine, batch)]
    print(f"in-process engine: {baseline[0]:.1f} pairs/s", flush=True)

    ray.init(num_cpus=opts.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8765})
    rows = []
    for label, batch_size in (("on", opts.max_batch_size), ("off", 1)):
        args = ServeArgs(engine=replica_engine,
                         batching={"max_batch_size": batch_size, "batch_wait_timeout_s": 0.005})
        deployment = RerankDeployment.options(num_replicas=opts.replicas, max_ongoing_requests=64,
                                      ray_actor_options={"num_cpus": opts.cpus / opts.replicas})
        serve.run(deployment.bind(args), name="bench", route_prefix="/")
        url = "http://127.0.0.1:8765/v1/rerank"
        closed_loop(url, requests, 1, 2.0)  # warm up
        for clients in (int(c) for c in opts.clients.split(",")):
            row = {"batching": label, "clients": clients, **closed_loop(url, requests, clients, opts.seconds)}
            rows.append(row)
            print(table([row], "{:.1f}").splitlines()[-1], flush=True)
        serve.delete("bench")
        baseline.append(in_process_pairs_per_s(engine, batch))  # between and after the Serve runs
    serve.shutdown()
    ray.shutdown()

    best = max(r["pairs/s"] for r in rows)
    print(f"\nall-MiniLM-L6-v2 late interaction, {opts.docs} docs/request, torch CPU, {opts.replicas} replica(s) "
          f"of {replica_engine.threads} thread(s); load average {load_average()} at end")
    print(table(rows, "{:.1f}"))
    print(f"\nin-process engine, {opts.cpus} threads, one call on {len(batch) * opts.docs} pairs: "
          f"{max(baseline):.1f} pairs/s (runs: "
          f"{', '.join(f'{b:.1f}' for b in baseline)})")
    print(f"serving overhead: best served {best:.1f} pairs/s = {100 * best / max(baseline):.0f}% of in-process "
          "(goal >= 85%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
