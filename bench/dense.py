"""Dense search on SciFact: rayrank's exact search and faiss HNSW against faiss' flat index, same run.

    python bench/dense.py [--index runs/funnel-scifact-index/dense] [--repeats 5]

Reads a dense index (`rayrank dense-index`, or the one `rayrank funnel --config configs/funnel.scifact.yaml`
builds), encodes the 300 test claims once with its model, then times top-100 search (best of --repeats,
round-robin): rayrank's exact matmul (`DenseIndex.search`), rayrank's HNSW option (faiss IndexHNSWFlat,
built once, not timed) and faiss IndexFlatIP (what a user would otherwise pick for exact search). Prints
ms per claim, the ratio to faiss flat, recall@100 against exact search, and Recall@100 / nDCG@10 on the
test qrels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from _common import REPO, SCIFACT, interleaved, load_average, skip_message, table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", default=str(REPO / "runs" / "funnel-scifact-index" / "dense"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()
    if not (SCIFACT / "queries.test.parquet").is_file():
        print(skip_message(SCIFACT))
        return 0
    if not (Path(args.index) / "_manifest.json").is_file():
        print(f"skipped: no finished dense index at {args.index}; build it with `rayrank funnel ... --config "
              "configs/funnel.scifact.yaml` or `rayrank dense-index`.")
        return 0
    import faiss

    from rayrank.evaluate import evaluate, load_qrels
    from rayrank.funnel.dense import DenseEncoder, DenseIndex
    from rayrank.ranking import Ranking

    index = DenseIndex(args.index)
    queries = pq.read_table(SCIFACT / "queries.test.parquet").to_pylist()
    qids = [q["query_id"] for q in queries]
    vectors = DenseEncoder(index.manifest["model"]["path"]).encode([q["query"] for q in queries])
    qrels = load_qrels(SCIFACT / "qrels.test.txt")
    flat = faiss.IndexFlatIP(index.vectors.shape[1])
    flat.add(index.vectors)
    index.search_hnsw(vectors[:1], args.k)  # builds the graph outside the timing

    def faiss_flat():
        scores, rows = flat.search(vectors, args.k)
        return [Ranking([index.doc_ids[j] for j in r], s) for r, s in zip(rows, scores)]

    print(f"load average at start {load_average()}", file=sys.stderr)
    timed = interleaved({"faiss IndexFlatIP (exact)": faiss_flat,
                         "rayrank exact (numpy matmul)": lambda: index.search(vectors, args.k),
                         "rayrank hnsw (faiss, M 32, efSearch 128)": lambda: index.search_hnsw(vectors, args.k)},
                        args.repeats)
    exact = timed["rayrank exact (numpy matmul)"][1]
    base = timed["faiss IndexFlatIP (exact)"][0]
    rows = []
    for name, (seconds, hits) in timed.items():
        run = {q: {d: float(s) for d, s in zip(r.doc_ids, r.scores)} for q, r in zip(qids, hits)}
        metrics = evaluate(run, qrels)
        overlap = np.mean([len(set(a.doc_ids) & set(b.doc_ids)) / len(a) for a, b in zip(exact, hits)])
        rows.append({"search": name, "ms/claim": 1000 * seconds / len(qids), "× faiss flat": base / seconds,
                     "recall@100 vs exact": overlap, "nDCG@10": metrics.ndcg_at_10, "R@100": metrics.recall_at_100})
    print(f"SciFact dense index: {len(index):,} documents × {index.vectors.shape[1]} ({index.manifest['model']['name']}), "
          f"{len(qids)} claims, top {args.k}, best of {args.repeats} (load average at end {load_average()})")
    print(table(rows, "{:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
