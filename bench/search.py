"""The online funnel through `POST /v1/search` on SciFact: per-stage latency, then open-loop load with and
without a latency budget, at arrival rates scaled to what the cross-encoder stage can serve here.

Funnel: BM25 over the 5,183 abstracts (k 20; with `--index`, BM25 and late interaction over that
`rayrank index` directory, k 100 each, z-score fused to 20) -> a MiniLM-L6-shaped cross-encoder on
those 20 (the all-MiniLM-L6-v2 backbone with a fresh head: the real cost, not a trained ranker; one
replica, one thread, one request per engine call, like the reference's single-server queue) -> 10.

1. Per-stage table: `--sequential` SciFact test claims one at a time (no queue), each stage's ms per
   query from `meta.stages` (p50/p99), documents in and out.
2. Load: the cross-encoder's capacity is 1 / its sequential ms per query; each level offers
   `--rates` x that capacity (Poisson arrivals, open loop, `rayrank.loadtest`), first without a
   budget, then (same rate, next in the run) with `latency_budget_ms: --budget-ms` (default twice
   the sequential p50); p50/p99 from the client, the share of answers that fell back, p99 / budget.

The budget is enforced by the ingress's clock less `deadline.margin_ms` (`--margin-ms`, 50 here: on
2 loaded cores the proxy and HTTP outside that clock take tens of ms at p99; the product default is
10 ms). The cross-encoder reads `--max-length` tokens of each (claim, abstract) pair (default 128: SciFact's
abstracts run to 300+ tokens, and the reference's 45 ms a request is for short passages).

    python bench/search.py                            # about 4 minutes on 2 CPU cores (model loading included)
    python bench/search.py --index runs/scifact-li    # with a late-interaction first stage
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _common import REPO, SCIFACT, load_average, minilm_cross_encoder, skip_message, table


def funnel(index: str | None, reranker: Path, max_length: int) -> list[dict]:
    rerank = {"kind": "rerank", "name": "cross-encoder", "k": 10,
              "engine": {"model": str(reranker), "scorer": "cross-encoder", "threads": 1, "max_length": max_length}}
    if index is None:
        return [{"kind": "bm25", "name": "bm25", "k": 20}, rerank]
    return [{"kind": "bm25", "name": "bm25", "k": 100},
            {"kind": "late-interaction", "name": "late-interaction", "k": 100, "index": index},
            {"kind": "fuse", "name": "fused", "k": 20, "method": "zscore",
             "weights": {"bm25": 1.0, "late-interaction": 1.0}}, rerank]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", help="a late-interaction index of the SciFact corpus (rayrank index)")
    parser.add_argument("--sequential", type=int, default=20, help="claims sent one at a time for the stage table")
    parser.add_argument("--rates", default="0.5,1.0,2.0", help="offered loads as multiples of the capacity")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per level")
    parser.add_argument("--budget-ms", type=float, help="latency_budget_ms (default: twice the sequential p50)")
    parser.add_argument("--max-length", type=int, default=128, help="cross-encoder tokens per (claim, abstract)")
    parser.add_argument("--margin-ms", type=float, default=50.0,
                        help="deadline.margin_ms: the time outside the ingress's clock (proxy, HTTP) on this machine")
    opts = parser.parse_args(argv)
    if not (SCIFACT / "corpus.parquet").is_file():
        print(skip_message(SCIFACT))
        return 0

    import pyarrow.parquet as pq
    import ray
    from ray import serve

    from rayrank import loadtest
    from rayrank.config import parse_config
    from rayrank.ray_app.search import build_search_app
    from rayrank.ray_app.search_config import SearchArgs

    reranker = minilm_cross_encoder(REPO / "runs" / "bench-minilm-cross-encoder")
    stages = funnel(opts.index and str(Path(opts.index).resolve()), reranker, opts.max_length)
    deployments = {s["name"]: {"num_cpus": 0.25} for s in stages}
    deployments["cross-encoder"] = {"num_cpus": 1, "max_batch_size": 1}
    args = parse_config(SearchArgs, {"funnel": {"corpus": {"path": str(SCIFACT / "corpus.parquet")}, "stages": stages},
                                     "deployments": deployments, "default_top_n": 10,
                                     "deadline": {"margin_ms": opts.margin_ms}}, "bench")
    claims = pq.read_table(SCIFACT / "queries.test.parquet", columns=["query"]).column("query").to_pylist()
    print(f"CPU: {os.cpu_count()} cores; load average {load_average()} at the start", flush=True)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    with socket.socket() as sock:  # a free port: other engineers serve on this machine too
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_search_app(args), name="search", route_prefix="/")
    url = f"http://127.0.0.1:{port}/v1/search"
    rng = np.random.default_rng(0)

    async def one_at_a_time(bodies: list[bytes]) -> list[loadtest.Sample]:
        out = []
        for body in bodies:
            out += await loadtest.run_level(url, np.zeros(1), [body], timeout=120)
        return out

    asyncio.run(one_at_a_time([json.dumps({"query": q}).encode() for q in claims[-10:]]))  # warm up
    sequential = asyncio.run(one_at_a_time([json.dumps({"query": q}).encode() for q in claims[:opts.sequential]]))
    print(f"\n## Per stage, {len(sequential)} claims one at a time (ms per query)\n")
    print(table(loadtest.stage_table(sequential), floats="{:g}"))
    total = loadtest.percentiles([s.latency for s in sequential if s.status == 200])
    print(f"end to end (client): p50 {total['p50']:.1f} ms, p99 {total['p99']:.1f} ms")
    rerank_ms = np.mean([st["ms"] for s in sequential for st in s.stages if st["name"] == "cross-encoder"])
    capacity = 1000 / rerank_ms
    print(f"cross-encoder stage: {rerank_ms:.1f} ms per query -> one replica serves about {capacity:.2f} req/s")
    budget_ms = opts.budget_ms or round(2 * total["p50"], -1)
    print(f"budget: {budget_ms:g} ms")

    rows = []
    for multiple in (float(m) for m in opts.rates.split(",")):
        rate = round(multiple * capacity, 2)
        for budget in (None, budget_ms):
            schedule = loadtest.arrivals(rate, opts.duration, rng)
            bodies = loadtest.make_payloads(len(claims), 10, "/v1/search", rng, claims, budget)
            samples = asyncio.run(loadtest.run_level(url, schedule, bodies, timeout=120))
            row = loadtest.LevelResult(rate, samples, opts.duration, search=True).row()
            rows.append({"x capacity": multiple, "req/s": rate, "budget ms": budget or "none", "sent": row["sent"],
                         "ok": row["ok"], "p50": row["p50"], "p99": row["p99"], "max": row["max"],
                         "fallback share": row["fallback_share"],
                         "p99 / budget": round(row["p99"] / budget, 2) if budget else "-"})
            print(f"  {rate} req/s, budget {budget}: p99 {row['p99']} ms, fallbacks {row['fallback_share']}",
                  flush=True)
    print(f"\n## Open loop, {opts.duration:g} s per level (client latencies in ms)\n")
    print(table(rows, floats="{:g}"))
    print(f"load average {load_average()} at the end (other engineers' work shares the 2 cores)")
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
