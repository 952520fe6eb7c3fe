"""Index build speed and memory, and rerank-from-index latency against a cross-encoder.

Default mode, on the same documents in the same run (the BM25 top-100 documents of the first
`--queries` SciFact test claims, `title + " " + text`) with the bundled all-MiniLM-L6-v2:
  1. `SentenceTransformer.encode(doc, output_value="token_embeddings")`, one call per document,
  2. one batched `SentenceTransformer.encode(docs, output_value="token_embeddings")` call (timed
     before and after the index jobs, so drift of the shared machine's load shows),
  3. the index job (`python -m rayrank.jobs.index`, embedded local Ray) once per `--engines` setting
     (`torch`, `onnx`, `onnx-int8`): docs/s once its actors are up (first shard start to last shard
     end, what a long build runs at), in the whole encoding phase, and end to end,
and then, per query with its 100 candidates: late-interaction rerank from the first engine's index
(query encoding + reading 100 documents + MaxSim) against the cross-encoder engine on the same pairs
(a MiniLM-L6-shaped cross-encoder: the all-MiniLM-L6-v2 backbone with a fresh 1-logit head).

`--rss N [N ...]` instead builds indexes of N synthetic documents with a tiny random encoder and
prints the peak RSS of the job's process tree (driver, Ray, actors), to show the build's memory
does not grow with the corpus. Examples:

    python bench/index.py --queries 3 --engines torch onnx onnx-int8
    python bench/index.py --rss 10000 50000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MINILM, REPO, SCIFACT, load_average, minilm_cross_encoder, skip_message, table  # noqa: E402

ENGINES = {"torch": {"backend": "torch"}, "onnx": {"backend": "onnx"},
           "onnx-int8": {"backend": "onnx", "quantize": "int8"}}


def _index_job(args: list[str], sample_rss: bool = False) -> tuple[float, dict, dict]:
    """Run `python -m rayrank.jobs.index`; (wall seconds, manifest, peak RSS in MiB of the process tree)."""
    # Ray runs workers at nice 15; on a shared machine that would starve the job against the
    # sentence-transformers baseline (nice 0) in this process, so both run at the same priority.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "RAY_worker_niceness": "0"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "rayrank.jobs.index", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {"driver": 0.0, "largest_other": 0.0, "tree_total": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            tree = _tree_rss(proc.pid)
            if tree:
                peaks["driver"] = max(peaks["driver"], tree.get(proc.pid, 0.0))
                others = [v for pid, v in tree.items() if pid != proc.pid]
                peaks["largest_other"] = max(peaks["largest_other"], max(others, default=0.0))
                peaks["tree_total"] = max(peaks["tree_total"], sum(tree.values()))
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    if sample_rss:
        thread.start()
    _, err = proc.communicate()
    stop.set()
    if proc.returncode:
        raise SystemExit(f"index job failed ({proc.returncode}): {' '.join(args)}\n{err[-3000:]}")
    return time.perf_counter() - started, json.loads((Path(args[1]) / "_manifest.json").read_text()), peaks


def _tree_rss(root: int) -> dict[int, float]:
    """RSS (MiB) of `root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, IndexError, ValueError):
            continue
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in rss:
            tree[pid] = rss[pid]
        todo += children.get(pid, [])
    return tree


def rss_mode(sizes: list[int], shard_rows: int, actors: str) -> None:
    import random

    sys.path.insert(0, str(REPO))
    from tests.tiny_models import WORDS, make_encoder

    work = Path(tempfile.mkdtemp(prefix="rayrank-bench-index-rss-"))
    encoder = make_encoder(work / "tiny")
    print(f"index build peak RSS (MiB), tiny random encoder, shard_rows {shard_rows}, actors {actors}; "
          f"load average {load_average()} at start\n", flush=True)
    rows = []
    for n in sizes:
        rng = random.Random(n)
        texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 60))) for _ in range(n)]
        docs = work / f"docs-{n}.parquet"
        pq.write_table(pa.table({"doc_id": [f"d{i}" for i in range(n)], "text": texts}), docs, row_group_size=1000)
        config = work / "rss.yaml"
        config.write_text(json.dumps({"shard_rows": shard_rows, "engine": {"model": str(encoder)}}))
        wall, manifest, peaks = _index_job([str(docs), str(work / f"index-{n}"), "--config", str(config),
                                            "--actors", actors], sample_rss=True)
        rows.append({"docs": f"{n:,}", "shards": len(manifest["shards"]), "driver MiB": round(peaks["driver"]),
                     "largest other process MiB": round(peaks["largest_other"]),
                     "process tree MiB": round(peaks["tree_total"]), "wall s": round(wall, 1)})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{table(rows)}\nload average {load_average()} at the end")


def _scifact_docs(queries: int) -> tuple[pa.Table, list[str], list[str]]:
    """(the candidate pairs of the first `queries` test claims, their distinct doc_ids, texts)."""
    candidates = pq.read_table(SCIFACT / "candidates.test.parquet")
    first = candidates["query_id"].unique().slice(0, queries)
    pairs = candidates.filter(pc.is_in(candidates["query_id"], value_set=first))
    seen: dict[str, str] = {}
    for d, t in zip(pairs["doc_id"].to_pylist(), pairs["text"].to_pylist()):
        seen.setdefault(d, t)
    return pairs, list(seen), list(seen.values())


def speed_mode(queries: int, actors: str, engines: list[str], batch_size: int, shard_rows: int) -> None:
    if not SCIFACT.is_dir():
        print(skip_message(SCIFACT))
        return
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    import rayrank
    from rayrank.index import IndexReader, score_from_index

    work = Path(tempfile.mkdtemp(prefix="rayrank-bench-index-"))
    pairs, ids, texts = _scifact_docs(queries)
    pq.write_table(pa.table({"doc_id": ids, "text": texts}), work / "docs.parquet", row_group_size=100)
    n = len(texts)
    print(f"{n:,} SciFact documents (BM25 top-100 of {queries} claims), {MINILM}; torch threads here "
          f"{torch.get_num_threads()}; index job: actors {actors}, 1 thread each; load average {load_average()}",
          flush=True)
    for name in engines:  # export (and quantize) ONNX models once, outside the timings
        rayrank.Reranker(MINILM, scorer="late-interaction", **ENGINES[name])

    st = SentenceTransformer(str(rayrank.resolve_model(MINILM).path), device="cpu")
    st.encode(texts[:8], output_value="token_embeddings")  # warm-up

    def batched() -> float:
        started = time.perf_counter()
        st.encode(texts, output_value="token_embeddings", batch_size=batch_size)
        return n / (time.perf_counter() - started)

    started = time.perf_counter()
    for text in texts:
        st.encode(text, output_value="token_embeddings")
    rates = {"ST encode(doc), one call per document": n / (time.perf_counter() - started)}
    before = batched()
    jobs = {}
    for name in engines:
        config = work / f"{name}.yaml"
        # A 256-document codec sample keeps the codec phase small next to encoding (reported separately).
        config.write_text(json.dumps({"shard_rows": shard_rows, "sample_docs": 256,
                                      "engine": {**ENGINES[name], "threads": 1}}))
        wall, manifest, _ = _index_job([str(work / "docs.parquet"), str(work / name), "--config", str(config),
                                        "--model", MINILM, "--actors", actors])
        jobs[name] = work / name
        t = manifest["timings"]
        rates[f"index job ({name}), once actors were up"] = t["steady_docs_per_s"]
        rates[f"index job ({name}), encoding phase incl. actor start"] = t["docs_per_s"]
        rates[f"index job ({name}), end to end incl. Ray start, codec ({wall:.0f} s)"] = n / wall
        print(f"{name}: {t['steady_docs_per_s']} docs/s once actors were up, {t['docs_per_s']} in the encoding "
              f"phase, {wall:.1f} s end to end", flush=True)
    after = batched()
    baseline = (before + after) / 2
    rates = {f"ST encode(docs) batched ({batch_size}), before / after the jobs: {before:.1f} / {after:.1f}": baseline,
             **rates}
    print(f"\n{table([{'': k, 'docs/s': v, 'vs batched': v / baseline} for k, v in rates.items()], '{:.2f}')}")
    del st

    first = engines[0]
    reader = IndexReader(str(jobs[first]))
    li = rayrank.Reranker(MINILM, scorer="late-interaction", **ENGINES[first]).scorer
    ce = rayrank.Reranker(str(minilm_cross_encoder(work / "cross-encoder")), scorer="cross-encoder",
                          **ENGINES[first])
    by_query: dict[str, tuple[str, list[str], list[str]]] = {}
    for q, text, d, t in zip(*(pairs[c].to_pylist() for c in ("query_id", "query", "doc_id", "text"))):
        by_query.setdefault(q, (text, [], []))[1].append(d)
        by_query[q][2].append(t)
    score_from_index(li, reader, ["warm"] * 4, ids[:4], texts[:4])
    ce.score_pairs(["warm"] * 4, texts[:4])
    li_s, ce_s = [], []
    for query, doc_ids, doc_texts in by_query.values():
        started = time.perf_counter()
        score_from_index(li, reader, [query] * len(doc_ids), doc_ids, doc_texts)
        li_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        ce.score_pairs([query] * len(doc_texts), doc_texts)
        ce_s.append(time.perf_counter() - started)
    li_ms, ce_ms = 1000 * float(np.median(li_s)), 1000 * float(np.median(ce_s))
    print(f"\nper query, 100 candidates, engine {first} (median of {len(li_s)} queries); "
          f"load average {load_average()}\n")
    print(table([{"": "late interaction from the index", "ms": li_ms, "vs index": 1.0},
                 {"": "cross-encoder engine (MiniLM-L6 shape)", "ms": ce_ms, "vs index": ce_ms / li_ms}], "{:.1f}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=3, help="SciFact claims whose top-100 documents are used")
    parser.add_argument("--actors", default="2,2")
    parser.add_argument("--engines", nargs="+", default=["torch", "onnx"], choices=list(ENGINES),
                        help="an index job per engine; the first also serves the rerank comparison")
    parser.add_argument("--batch-size", type=int, default=32, help="the batched ST call's batch size")
    parser.add_argument("--rss", type=int, nargs="+", help="synthetic corpus sizes for the memory test")
    parser.add_argument("--shard-rows", type=int, help="documents per shard (default 1000 for --rss, else 50)")
    args = parser.parse_args(argv)
    if args.rss:
        rss_mode(args.rss, args.shard_rows or 1000, args.actors)
    else:
        speed_mode(args.queries, args.actors, args.engines, args.batch_size, args.shard_rows or 50)
    return 0


if __name__ == "__main__":
    sys.exit(main())
