"""A late-interaction index past memory: 1,000,000 synthetic documents, residual-compressed, searched by IVF.

Synthetic token embeddings drawn like bench/peers.py's 100,000-document corpus (8–48 tokens of dim
128 a document, each near one of the document's 4 topics among 1,024; a query is 8 noisy tokens of
one document), generated and packed one shard at a time (`rayrank.index.build.write_index_shards`),
so the build never holds the corpus. Reports:
  - index bytes per token (every file: residuals, codes, postings, doc tables) and build time,
  - opening the index and its IVF postings, then `--queries` IVF searches, in a fresh process:
    open time, queries/s, and its resident memory sampled from /proc every 0.05 s (peak, and the
    anonymous part: what is not a page of a memory-mapped index file),
  - Recall@100 of those searches against exact search on the first `--exact-queries` of them (one
    streaming pass over the whole index, in another fresh process, also timed).

    flock -x /tmp/rayrank-bench.lock python bench/index_scale.py              # about 25 min on 2 cores
    flock -x /tmp/rayrank-bench.lock python bench/index_scale.py --docs 100000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, table  # noqa: E402

DIM, TOPICS = 128, 1024


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def shard(centres: np.ndarray, first: int, docs: int, seed: int) -> tuple[list[str], list[np.ndarray]]:
    """Documents first … first + docs - 1 (deterministic for a seed): like peers.synthetic_corpus, vectorised."""
    rng = np.random.default_rng([seed, first])
    sizes = rng.integers(8, 49, size=docs)
    topics = rng.integers(0, len(centres), size=(docs, 4))
    owner = np.repeat(np.arange(docs), sizes)
    picked = centres[topics[owner, rng.integers(0, 4, size=len(owner))]]
    flat = _unit(picked + 0.5 * rng.standard_normal(picked.shape, dtype=np.float32)).astype(np.float16)
    return [f"d{first + i}" for i in range(docs)], np.split(flat, np.cumsum(sizes)[:-1])


def queries_of(documents: list[np.ndarray], count: int, seed: int) -> list[np.ndarray]:
    """8 tokens of a random document each, plus 0.3 of a unit token's scale of noise (cosine about 0.96)."""
    rng = np.random.default_rng(seed)
    out = []
    for d in rng.integers(0, len(documents), size=count):
        picked = documents[d][rng.integers(0, len(documents[d]), size=8)].astype(np.float32)
        out.append(_unit(picked + 0.3 / np.sqrt(DIM) * rng.standard_normal(picked.shape)).astype(np.float32))
    return out


def build(root: Path, docs: int, shard_docs: int, nbits: int, centroids: int, queries: int, seed: int
          ) -> tuple[dict, list[np.ndarray], float]:
    """Write the index; returns (manifest, queries drawn from every shard's documents, seconds)."""
    from rayrank.index.build import write_index_shards

    centres = np.random.default_rng(seed).standard_normal((TOPICS, DIM)).astype(np.float32)
    firsts = list(range(0, docs, shard_docs))
    per_shard = -(-queries // len(firsts))
    asked: list[np.ndarray] = []

    def shards():
        for number, first in enumerate(firsts):
            ids, embeddings = shard(centres, first, min(shard_docs, docs - first), seed)
            asked.extend(queries_of(embeddings, per_shard, seed + 1 + number))
            yield ids, embeddings
            print(f"  shard {number + 1}/{len(firsts)} written, {time.perf_counter() - started:.0f} s", flush=True)

    started = time.perf_counter()
    # the codec's sample: 8,192 documents of the first shard (about 230,000 tokens)
    sample = shard(centres, 0, min(8192, docs), seed)[1]
    manifest = write_index_shards(str(root), sample, shards(), "residual", nbits, centroids, corpus_docs=docs)
    return manifest, asked[:queries], time.perf_counter() - started


def memory() -> dict[str, float]:
    """This process's resident memory in MiB from /proc/self/status (total, anonymous, file-backed)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "RssAnon", "RssFile")}


def measure(mode: str, root: str, queries_path: str, out_path: str, k: int, candidates: list[int]) -> None:
    """Child process: open the index, search (`ivf`: once per `candidates`, or `exact`), write hits, timings
    and memory."""
    from rayrank.index import IndexReader, IvfSearcher, exact_search

    peaks = dict.fromkeys(("VmRSS", "RssAnon", "RssFile"), 0.0)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for key, value in memory().items():
                peaks[key] = max(peaks[key], value)
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    with np.load(queries_path) as data:
        queries = [data[str(i)] for i in range(len(data.files))]
    before = memory()
    started = time.perf_counter()
    reader = IndexReader(root)
    searcher = IvfSearcher(reader) if mode == "ivf" else None
    opened_s, opened = time.perf_counter() - started, memory()
    runs = []
    for count in candidates if searcher else [None]:
        if searcher:
            searcher.candidates, searcher.pool = count, 2 * count  # the defaults' ratio
        started = time.perf_counter()
        hits = searcher.search(queries, k) if searcher else exact_search(reader, queries, k)
        runs.append({"candidates": count, "qps": len(queries) / (time.perf_counter() - started),
                     "hits": [h.doc_ids for h in hits]})
    stop.set()
    thread.join()
    result = {"mode": mode, "queries": len(queries), "open_s": opened_s, "rss_start_mib": before["VmRSS"],
              "rss_opened_mib": opened["VmRSS"], "peak_rss_mib": peaks["VmRSS"], "peak_anon_mib": peaks["RssAnon"],
              "peak_file_mib": peaks["RssFile"], "runs": runs}
    Path(out_path).write_text(json.dumps(result))


def child(mode: str, root: Path, queries: list[np.ndarray], work: Path, k: int, candidates: list[int]) -> dict:
    np.savez(work / f"queries-{mode}.npz", **{str(i): q for i, q in enumerate(queries)})
    out = work / f"{mode}.json"
    subprocess.run([sys.executable, __file__, "--measure", mode, str(root), str(work / f"queries-{mode}.npz"),
                    str(out), "--k", str(k), "--candidates", *map(str, candidates)], check=True)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--shard-docs", type=int, default=20_000)
    parser.add_argument("--nbits", type=int, default=2)
    parser.add_argument("--centroids", type=int, default=None, help="k-means centroids (default: the index's)")
    parser.add_argument("--queries", type=int, default=500, help="IVF searches timed")
    parser.add_argument("--exact-queries", type=int, default=100, help="of those, how many get exact search")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--candidates", type=int, nargs="+", default=None,
                        help="IVF candidates (pool: twice that), one timed pass each (default: IvfSearcher's for "
                             "--k and --docs)")
    parser.add_argument("--work-dir", help="keep the index here (default: a temporary directory, removed)")
    parser.add_argument("--measure", nargs=4, metavar=("MODE", "INDEX", "QUERIES", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.candidates is None:
        from rayrank.index.search import default_candidates

        args.candidates = [default_candidates(args.k, args.docs)]
    if args.measure:
        measure(*args.measure, k=args.k, candidates=args.candidates)
        return 0
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="rayrank-index-scale-"))
    root = work / "index"
    shutil.rmtree(root, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    print(f"{args.docs:,} synthetic documents, residual {args.nbits} bits, {args.centroids} centroids; "
          f"{os.cpu_count()} CPUs; load average {load_average()}", flush=True)
    manifest, queries, build_s = build(root, args.docs, args.shard_docs, args.nbits, args.centroids, args.queries,
                                       seed=0)
    files = [p for p in root.rglob("*") if p.is_file()]
    tokens = manifest["total_tokens"]
    by_kind = {kind: sum(p.stat().st_size for p in files if p.name.endswith(kind))
               for kind in (".residuals.npy", ".codes.npy", ".postings.npy", ".parquet")}
    print(f"built in {build_s:.0f} s: {tokens:,} tokens, {sum(p.stat().st_size for p in files) / 2**30:.2f} GiB",
          flush=True)
    ivf = child("ivf", root, queries, work, args.k, args.candidates)
    print(f"IVF: {[round(r['qps'], 1) for r in ivf['runs']]} queries/s, peak RSS {ivf['peak_rss_mib']:,.0f} MiB",
          flush=True)
    exact = child("exact", root, queries[:args.exact_queries], work, args.k, args.candidates)
    truth = exact["runs"][0]["hits"]
    sizes = {"docs": f"{manifest['docs']:,}", "tokens": f"{tokens:,}",
             **{f"bytes/token {kind.strip('.').split('.')[0]}": size / tokens for kind, size in by_kind.items()},
             "bytes/token, all files": sum(p.stat().st_size for p in files) / tokens, "build s": build_s}
    process = lambda r: {"open s": r["open_s"], "RSS opened MiB": r["rss_opened_mib"],
                         "peak RSS MiB": r["peak_rss_mib"], "peak anon MiB": r["peak_anon_mib"],
                         "peak file MiB": r["peak_file_mib"]}
    rows = [{"search": f"IVF, nprobe 2, {run['candidates']:,} candidates", "queries": ivf["queries"],
             "queries/s": run["qps"], "R@100 vs exact": float(np.mean([len(set(a) & set(e)) / len(e)
                                                                       for a, e in zip(run["hits"], truth)])),
             **process(ivf)} for run in ivf["runs"]]
    rows.append({"search": "exact (one streaming pass)", "queries": exact["queries"],
                 "queries/s": exact["runs"][0]["qps"], "R@100 vs exact": 1.0, **process(exact)})
    print(f"\n{table([sizes], '{:.2f}')}\n\n{table(rows, '{:,.2f}')}\nload average {load_average()} at the end")
    (work / "result.json").write_text(json.dumps({"index": sizes, "search": rows}, indent=2))
    if not args.work_dir:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
