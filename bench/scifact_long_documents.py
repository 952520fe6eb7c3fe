"""Long documents on BEIR SciFact: late interaction with a short window, truncate vs chunk, and full length.

The BM25 top-100 of the 300 test claims (../shared/data/scifact/candidates.test.parquet, title +
abstract as text) reranked by the bundled all-MiniLM-L6-v2 as a late-interaction scorer with
`max_length: 64`: `long_documents: truncate` keeps each abstract's first 62 tokens; `chunk` cuts it
into 64-token windows (`--overlap` tokens shared, at most `--max-chunks`) and scores MaxSim over the
union of their tokens. "full length" runs the model's own limit (256 tokens, all-MiniLM's
max_seq_length). Each distinct abstract is encoded once per setting with the engine's
`encode_documents` (what `score_pairs`, the job and the server call), then every claim's 100
candidates are scored by MaxSim. Prints nDCG@10 and what each setting cost.

    flock /tmp/rayrank-bench.lock python bench/scifact_long_documents.py      # about 4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MINILM, SCIFACT, load_average, load_scifact, skip_message, table

import rayrank
from rayrank.evaluate import evaluate
from rayrank.scoring.late_interaction import maxsim


def rerank(settings: dict, candidates) -> tuple[dict, dict]:
    """The run of one engine setting, and what it cost (seconds, tokens kept, documents truncated)."""
    reranker = rayrank.Reranker(MINILM, scorer="late-interaction", **settings)
    scorer = reranker.scorer
    rows = candidates.to_pylist()
    texts = {r["doc_id"]: r["text"] for r in rows}
    queries = {r["query_id"]: r["query"] for r in rows}
    started = time.perf_counter()
    doc_ids = list(texts)
    encoded, truncated = scorer._encode_documents([texts[d] for d in doc_ids])  # encode_documents, and the count
    embeddings = dict(zip(doc_ids, encoded))
    query_embeddings = dict(zip(queries, scorer.encode_queries(list(queries.values()))))
    by_query: dict[str, list[str]] = {}
    for r in rows:
        by_query.setdefault(r["query_id"], []).append(r["doc_id"])
    run = {q: dict(zip(docs, maxsim(query_embeddings[q], [embeddings[d] for d in docs]).tolist()))
           for q, docs in by_query.items()}
    seconds = time.perf_counter() - started
    tokens = sum(len(e) for e in embeddings.values()) / len(embeddings)
    return run, {"seconds": seconds, "truncated": truncated, "documents": len(doc_ids), "tokens": tokens}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--max-chunks", type=int, default=16)
    parser.add_argument("--skip-full", action="store_true", help="leave out the full-length setting")
    opts = parser.parse_args(argv)
    loaded = load_scifact()
    if loaded is None:
        print(skip_message(SCIFACT))
        return 0
    candidates, qrels = loaded
    settings = {
        f"truncate, max_length {opts.max_length}": {"max_length": opts.max_length},
        f"chunk, max_length {opts.max_length}": {"max_length": opts.max_length, "long_documents": "chunk",
                                                 "chunk_overlap_tokens": opts.overlap,
                                                 "max_chunks_per_doc": opts.max_chunks},
    }
    if not opts.skip_full:
        settings["full length (256)"] = {}
    print(f"load average at the start {load_average()}", flush=True)
    rows = []
    for name, setting in settings.items():
        run, cost = rerank(setting, candidates)
        metrics = evaluate(run, qrels)
        rows.append({"setting": name, "nDCG@10": metrics.ndcg_at_10, "recall@10": metrics.recall_at_10,
                     "tokens/doc": cost["tokens"], "docs truncated": f"{cost['truncated']} of {cost['documents']}",
                     "encode+score s": cost["seconds"]})
        print(table(rows[-1:]), flush=True)
    print(f"\nSciFact test, {len(qrels)} claims, BM25 top-100, all-MiniLM-L6-v2 late interaction; "
          f"load average at the end {load_average()}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
