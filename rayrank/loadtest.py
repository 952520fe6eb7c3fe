"""`rayrank loadtest URL --qps 5,10,20 --duration 20 --docs 20`: open-loop load on a rerank or search endpoint.

Open loop: requests leave on a fixed schedule (Poisson arrivals at the offered rate) whether or
not earlier ones have answered, so a slow server builds a queue instead of slowing the client
down. Latency runs from each request's *scheduled* time, so time a request spent waiting in the
client counts too (no coordinated omission).

`--simulate` first measures service times (sequential requests, nothing queued) and then
replays every level through a single-server FIFO queue — same arrival times, service times
resampled from the measured ones — printing the predicted percentiles beside the measured ones.
A server that batches requests beats that prediction at high load; one that does not matches it.

Each level also reports how many replicas answered (rayrank's `X-Rayrank-Replica` response header),
in all and per 5 s of the level, so an autoscaler adding or removing replicas shows in the table.
`--api-key` (default: the `RAYRANK_API_KEY` variable) is sent as `Authorization: Bearer KEY`.

`--path /v1/search` loads the online funnel instead: each request asks for `--docs` results of one
query (random words, or `--queries` from a Parquet file), with `--budget-ms` as its
`latency_budget_ms`; the table then has a `fallback_share` column, the share of answers whose
`meta.fallback` says a stage was skipped to meet the budget, and each level is followed by the
funnel's per-stage table (documents in and out, milliseconds per query p50/p99 from `meta.stages`).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from rayrank.cli import command
from rayrank.errors import ServiceUnavailableError
from rayrank.extras import require

PERCENTILES = (50, 95, 99, 99.9)
REPLICA_HEADER = "X-Rayrank-Replica"
REPLICA_WINDOW_S = 5.0
WORDS = ("ray cluster node head worker actor task object store serve replica batch query document rank score "
         "model token embedding index search latency throughput queue python data scale memory gpu cpu").split()


@dataclass(frozen=True)
class Sample:
    """One request: when it was due (s from level start), its status (0 = no response) and latency (s)."""

    scheduled: float
    status: int
    latency: float
    error: str = ""
    replica: str = ""  # the replica that answered (X-Rayrank-Replica), when the server names it
    fallback: bool = False
    stages: tuple[dict, ...] = ()  # /v1/search: the answer's meta.stages


def arrivals(qps: float, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson arrival times in [0, duration) at `qps` per second.

    Example:
        >>> times = arrivals(50, 10, np.random.default_rng(0))
        >>> bool(400 < len(times) < 600 and (np.diff(times) >= 0).all() and times[-1] < 10)
        True
    """
    gaps = rng.exponential(1.0 / qps, size=int(qps * duration * 2) + 16)
    times = np.cumsum(gaps) - gaps[0]
    return times[times < duration]


def simulate_fifo(arrival_times: np.ndarray, service_times: np.ndarray) -> np.ndarray:
    """Latency of each arrival at a single FIFO server with the given service times.

    Example:
        >>> simulate_fifo(np.array([0.0, 0.1, 5.0]), np.array([1.0, 1.0, 1.0])).tolist()
        [1.0, 1.9, 1.0]
    """
    latencies = np.empty(len(arrival_times))
    free_at = 0.0
    for i, (arrive, service) in enumerate(zip(arrival_times, service_times)):
        free_at = max(arrive, free_at) + service
        latencies[i] = free_at - arrive
    return latencies


def percentiles(latencies: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/p99.9/max in milliseconds (NaN when there is nothing to measure)."""
    values = np.asarray(latencies, dtype=np.float64) * 1000
    if not len(values):
        return {**{f"p{p:g}": float("nan") for p in PERCENTILES}, "max": float("nan")}
    return {**{f"p{p:g}": float(np.percentile(values, p)) for p in PERCENTILES}, "max": float(values.max())}


def is_search(path: str) -> bool:
    return path.rstrip("/") == "/v1/search"


def make_payloads(n: int, docs: int, path: str, rng: np.random.Generator, queries: Sequence[str] = (),
                  budget_ms: float | None = None) -> list[bytes]:
    """`n` distinct JSON bodies for `path`: Cohere `/v1/rerank` or TEI `/rerank` with `docs` documents each,
    or `/v1/search` asking for `docs` results (queries drawn from `queries` when given)."""
    def sentence(k: int) -> str:
        return " ".join(rng.choice(WORDS, size=k))

    if is_search(path):
        picked = rng.choice(list(queries), size=n) if len(queries) else [sentence(6) for _ in range(n)]
        budget = {} if budget_ms is None else {"latency_budget_ms": budget_ms}
        return [json.dumps({"query": str(q), "top_n": docs, **budget}).encode() for q in picked]
    key = "texts" if path.rstrip("/") == "/rerank" else "documents"
    return [json.dumps({"query": sentence(6), key: [sentence(int(rng.integers(20, 60))) for _ in range(docs)]}).encode()
            for _ in range(n)]


def search_meta(body: bytes) -> tuple[bool, tuple[dict, ...]]:
    """A `/v1/search` answer's `meta`: whether a stage was skipped (`fallback`), and its `stages`."""
    try:
        meta = json.loads(body).get("meta", {})
        return bool(meta.get("fallback")), tuple(meta.get("stages", ()))
    except (ValueError, AttributeError):
        return False, ()


def stage_table(samples: Sequence[Sample]) -> list[dict]:
    """Per funnel stage: documents in and out (median), ms per query p50/p99, the share of answers skipping it."""
    by_stage: dict[str, list[dict]] = {}
    for sample in samples:
        for stage in sample.stages:
            by_stage.setdefault(stage["name"], []).append(stage)
    rows = []
    for name, seen in by_stage.items():
        ms = [s["ms"] / 1000 for s in seen]
        rows.append({"stage": name, "kind": seen[0]["kind"],
                     "docs_in": int(np.median([s["documents_in"] for s in seen])),
                     "docs_out": int(np.median([s["documents_out"] for s in seen])),
                     "p50": round(percentiles(ms)["p50"], 1), "p99": round(percentiles(ms)["p99"], 1),
                     "skipped_share": round(sum(bool(s["skipped"]) for s in seen) / len(seen), 3)})
    return rows


def replicas_over_time(samples: Sequence[Sample], window: float = REPLICA_WINDOW_S) -> str:
    """Distinct replicas that answered in each `window` seconds of scheduled time, e.g. "1 2 2 1".

    Example:
        >>> replicas_over_time([Sample(0.5, 200, 0.1, replica="a"), Sample(6, 200, 0.1, replica="a"),
        ...                     Sample(7, 200, 0.1, replica="b")])
        '1 2'
    """
    named = [s for s in samples if s.replica]
    if not named:
        return ""
    windows = int(max(s.scheduled for s in named) // window) + 1
    seen: list[set[str]] = [set() for _ in range(windows)]
    for s in named:
        seen[int(s.scheduled // window)].add(s.replica)
    return " ".join(str(len(w)) for w in seen)


async def _send(session, url: str, body: bytes, due: float, origin: float, timeout: float) -> Sample:
    import aiohttp

    try:
        async with session.post(url, data=body, headers={"content-type": "application/json"},
                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            answer = await response.read()
            status, error = response.status, "" if response.status < 400 else f"HTTP {response.status}"
            replica = response.headers.get(REPLICA_HEADER, "")
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        status, error, replica, answer = 0, type(exc).__name__, "", b""
    fallback, stages = search_meta(answer) if status == 200 else (False, ())
    return Sample(due - origin, status, time.perf_counter() - due, error, replica, fallback, stages)


async def run_level(url: str, schedule: np.ndarray, payloads: Sequence[bytes], timeout: float,
                    api_key: str | None = None) -> list[Sample]:
    """Send `payloads[i % n]` at `schedule[i]` seconds from now, never waiting for earlier answers."""
    import aiohttp

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=headers) as session:
        origin = time.perf_counter()
        tasks = []
        for i, offset in enumerate(schedule):
            due = origin + float(offset)
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(_send(session, url, payloads[i % len(payloads)], due, origin, timeout)))
        return list(await asyncio.gather(*tasks))


async def measure_service_times(url: str, payloads: Sequence[bytes], count: int, timeout: float,
                                api_key: str | None = None) -> np.ndarray:
    """Latencies of `count` sequential requests: service times with nothing queued."""
    out = []
    for i in range(count):
        (sample,) = await run_level(url, np.zeros(1), [payloads[i % len(payloads)]], timeout, api_key)
        if sample.status == 200:
            out.append(sample.latency)
    if not out:
        raise ServiceUnavailableError(f"no request to {url} succeeded while measuring service times; check that "
                                      "the service is up at that URL (and --api-key, if it asks for one).")
    return np.array(out)


@dataclass
class LevelResult:
    qps: float
    samples: list[Sample]
    duration: float
    simulated: dict[str, float] | None = None
    search: bool = False

    def elapsed(self) -> float:
        """From the level's start to its last answer (at least the scheduled duration)."""
        return max([self.duration] + [s.scheduled + s.latency for s in self.samples])

    def row(self) -> dict[str, float | int | str]:
        ok = [s.latency for s in self.samples if s.status == 200]
        errors = Counter(s.error for s in self.samples if s.status != 200)
        row: dict[str, float | int | str] = {"qps": self.qps, "sent": len(self.samples), "ok": len(ok),
                                             "errors": sum(errors.values()),
                                             "achieved_qps": round(len(ok) / self.elapsed(), 2)}
        row.update({k: round(v, 1) for k, v in percentiles(ok).items()})
        if self.search:
            row["fallback_share"] = round(sum(s.fallback for s in self.samples) / max(len(ok), 1), 3)
        if self.simulated:
            row.update({f"sim_{k}": round(v, 1) for k, v in self.simulated.items()})
        row["replicas"] = len({s.replica for s in self.samples if s.replica})
        row["replicas_per_5s"] = replicas_over_time(self.samples)
        row["error_kinds"] = "; ".join(f"{k} x{n}" for k, n in errors.most_common())
        return row


def format_table(rows: list[dict]) -> str:
    """A Markdown table of the rows' common keys (latencies in ms)."""
    keys = [k for k in rows[0] if k != "error_kinds"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f"{r[k]:g}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |"
              for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    qps = [r["qps"] for r in rows]
    for key, color in zip(["p50", "p95", "p99", "p99.9"], ["C0", "C1", "C2", "C3"]):
        ax.plot(qps, [r[key] for r in rows], "o-", color=color, label=f"{key} measured")
        if f"sim_{key}" in rows[0]:
            ax.plot(qps, [r[f"sim_{key}"] for r in rows], "x--", color=color, label=f"{key} FIFO simulation")
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rayrank loadtest", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("url", help="the service, e.g. http://127.0.0.1:8000 (the path comes from --path)")
    parser.add_argument("--path", default="/v1/rerank", help="/v1/rerank (Cohere), /rerank (TEI) or /v1/search")
    parser.add_argument("--qps", default="5,10,20", help="offered loads, comma-separated requests/s")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per level")
    parser.add_argument("--docs", type=int, default=20, help="documents per request (/v1/search: top_n)")
    parser.add_argument("--budget-ms", type=float, help="/v1/search: latency_budget_ms of every request")
    parser.add_argument("--queries", type=Path, help="/v1/search: a Parquet file whose `query` column is sent")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as failed")
    parser.add_argument("--simulate", action="store_true", help="measure service times and print a FIFO prediction")
    parser.add_argument("--calibration-requests", type=int, default=20,
                        help="--simulate: requests sent one at a time to measure service times (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("loadtest"), help="directory for results.csv and latency.png")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic documents "
                        "(default: %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("RAYRANK_API_KEY"),
                        help="sent as Authorization: Bearer KEY (default: $RAYRANK_API_KEY)")
    opts = parser.parse_args(argv)
    try:
        opts.levels = [float(q) for q in opts.qps.split(",")]
    except ValueError:
        parser.error(f"--qps: expected comma-separated numbers like 5,10,20, got {opts.qps!r}")
    if not opts.levels or min(opts.levels) <= 0 or opts.duration <= 0 or opts.docs <= 0:
        parser.error("--qps, --duration and --docs must be positive")
    return opts


async def _run(opts: argparse.Namespace) -> list[dict]:
    rng = np.random.default_rng(opts.seed)
    url = opts.url.rstrip("/") + opts.path
    queries = pq.read_table(opts.queries, columns=["query"]).column("query").to_pylist() if opts.queries else ()
    payloads = make_payloads(64 if not queries else max(64, len(queries)), opts.docs, opts.path, rng, queries,
                             opts.budget_ms)
    service = (await measure_service_times(url, payloads, opts.calibration_requests, opts.timeout, opts.api_key)
               if opts.simulate else None)
    if service is not None:
        print(f"service time (sequential, n={len(service)}): p50 {np.median(service) * 1000:.1f} ms, "
              f"mean {service.mean() * 1000:.1f} ms -> a FIFO server saturates near {1 / service.mean():.1f} req/s",
              flush=True)
    rows = []
    for qps in opts.levels:
        schedule = arrivals(qps, opts.duration, rng)
        samples = await run_level(url, schedule, payloads, opts.timeout, opts.api_key)
        simulated = None
        if service is not None:
            simulated = percentiles(simulate_fifo(schedule, rng.choice(service, size=len(schedule))))
        rows.append(LevelResult(qps, samples, opts.duration, simulated, is_search(opts.path)).row())
        print(f"  {qps:g} req/s: {rows[-1]['ok']}/{rows[-1]['sent']} ok, p99 {rows[-1]['p99']} ms, replicas "
              f"{rows[-1]['replicas']} ({rows[-1]['replicas_per_5s'] or 'not named'} per 5 s)", flush=True)
        if is_search(opts.path) and any(s.stages for s in samples):
            print(f"  stages at {qps:g} req/s (ms per query, queueing included):\n" +
                  format_table(stage_table(samples)), flush=True)
    return rows


@command("loadtest")
def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    rows = asyncio.run(_run(opts))
    opts.out.mkdir(parents=True, exist_ok=True)
    with open(opts.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, opts.out / "latency.png")
    print(format_table(rows))
    for row in rows:
        if row["error_kinds"]:
            print(f"errors at {row['qps']:g} req/s: {row['error_kinds']}")
    print(f"wrote {opts.out / 'results.csv'} and {opts.out / 'latency.png'}")
    return 0
