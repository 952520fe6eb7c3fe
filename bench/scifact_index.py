"""Late-interaction index quality on BEIR SciFact with the bundled all-MiniLM-L6-v2.

For each index setting (compression, nbits, pool factor) this builds the index of the 5,183
abstracts (`title + " " + text`, as in candidates.test.parquet) with the real index job on an
embedded local Ray (by default only the fp16 index; the other settings repack its vectors with
the same pooling, codec training and packing code, `rayrank.index.build.repack`), then reports, on the 300 test claims:
  - bytes per document (token vectors + centroid ids) and its ratio to the uncompressed index,
  - nDCG@10 of reranking the BM25 top-100 with document embeddings read from the index,
  - nDCG@10 of exact search over the whole index (`exact_search`, brute-force MaxSim, what `rayrank
    search --method exact` runs) and its queries/s,
  - IVF search (`IvfSearcher`, default settings unless given): Recall@100 against exact search on the
    same index, nDCG@10 and queries/s (the fp16 index's exact stage reads float16 rows, compressed
    ones decompress codes and residuals in blocks).
Queries are encoded once; every search runs in this process, one after another.
Needs ../shared/data/scifact (skips with a message when absent). Example:

    python bench/scifact_index.py --settings none residual:2 residual:4 none:pool2 residual:2:pool2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MINILM as MODEL  # noqa: E402
from _common import SCIFACT, load_average, scifact_corpus, skip_message, table


def parse_setting(text: str) -> dict:
    """`none`, `residual:2`, `none:pool2`, `residual:2:pool2` → index job settings."""
    parts = text.split(":")
    setting = {"compression": parts[0], "nbits": 2, "pool_factor": 1}
    for part in parts[1:]:
        if part.startswith("pool"):
            setting["pool_factor"] = int(part[4:])
        else:
            setting["nbits"] = int(part)
    return setting


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=["none", "residual:2", "residual:4", "none:pool2",
                                                          "residual:2:pool2"])
    parser.add_argument("--exact-for", nargs="*", default=None,
                        help="settings that also get exact search over the whole index (default: all)")
    parser.add_argument("--ivf", nargs="*", default=None,
                        help="settings also searched with IVF (default: those with exact search)")
    parser.add_argument("--nprobe", type=int, default=2)
    parser.add_argument("--candidates", type=int, help="IVF candidates (default: IvfSearcher's)")
    parser.add_argument("--job-for-all", action="store_true",
                        help="build every setting with the index job (default: the job builds the fp16 index, "
                             "other settings repack its vectors with the job's pooling/codec code)")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx"],
                        help="engine of the index job and queries")
    parser.add_argument("--quantize", default="none", choices=["none", "int8"], help="onnx: dynamic int8")
    parser.add_argument("--actors", default="2,2", help="index job actors (MIN,MAX), one CPU each")
    parser.add_argument("--workdir", help="keep indexes here (default: a temporary directory)")
    parser.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=True,
                        help="rerank the BM25 top-100 from each index (--no-rerank: search only)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if not SCIFACT.is_dir():
        print(skip_message(SCIFACT))
        return 0

    import rayrank
    from rayrank.config import IndexJobConfig
    from rayrank.evaluate import evaluate, load_qrels
    from rayrank.index import IndexReader, IvfSearcher, exact_search, score_from_index
    from rayrank.index.build import repack
    from rayrank.jobs.index import run as build_index

    work = Path(args.workdir or tempfile.mkdtemp(prefix="scifact-index-"))
    work.mkdir(parents=True, exist_ok=True)
    docs = scifact_corpus(work / "corpus.parquet")
    qrels = load_qrels(SCIFACT / "qrels.test.txt")
    candidates = pq.read_table(SCIFACT / "candidates.test.parquet")
    bm25 = evaluate({q: {d: -r for d, r in zip(g["doc_id"], g["bm25_rank"])}
                     for q, g in _groups(candidates).items()}, qrels).ndcg_at_10
    engine = {"model": MODEL, "backend": args.backend, "quantize": args.quantize}
    scorer = rayrank.Reranker(MODEL, scorer="late-interaction", backend=args.backend, quantize=args.quantize).scorer
    print(f"SciFact, {MODEL}, engine {args.backend} (quantize {args.quantize}); load average {load_average()}",
          flush=True)
    claims = pq.read_table(SCIFACT / "queries.test.parquet")
    ids = claims["query_id"].to_pylist()
    embeddings = scorer.encode_queries(claims["query"].to_pylist())

    def timed_run(search) -> tuple[dict, float]:
        started = time.perf_counter()
        hits = search(embeddings, 100)
        qps = len(ids) / (time.perf_counter() - started)
        return {q: {d: float(s) for d, s in zip(h.doc_ids, h.scores)} for q, h in zip(ids, hits)}, qps
    rows, base_bytes, source = [], None, None
    for name in args.settings:
        setting = parse_setting(name)
        out = work / name.replace(":", "-")
        config = IndexJobConfig.model_validate({"input": str(docs), "output": str(out), "engine": engine,
                                                "cluster": {"actors": args.actors}, **setting})
        started = time.perf_counter()
        if setting["compression"] == "none" and setting["pool_factor"] == 1 or args.job_for_all or source is None:
            manifest = build_index(config)
            built_by = "index job"
        else:  # same pooling/codec/packing code as the job, on the fp16 index's vectors: no re-encoding
            manifest = repack(source, str(out), setting["compression"], setting["nbits"], setting["pool_factor"])
            built_by = "repack of fp16 index"
        build_s = time.perf_counter() - started
        if setting["compression"] == "none" and setting["pool_factor"] == 1:
            source = IndexReader(str(out))
        reader = IndexReader(str(out))
        base_bytes = base_bytes or manifest["bytes_per_doc"]
        row = {"setting": name, **setting, "built_by": built_by, "docs": manifest["docs"],
               "tokens_per_doc": manifest["tokens_per_doc"], "bytes_per_doc": manifest["bytes_per_doc"],
               "size_vs_fp16": round(manifest["bytes_per_doc"] / base_bytes, 3),
               "centroids": manifest["compression"]["centroids"], "build_s": round(build_s, 1),
               "docs_per_s": manifest.get("timings", {}).get("docs_per_s")}
        if args.rerank:
            started = time.perf_counter()
            scores, missing = score_from_index(scorer, reader, candidates["query"].to_pylist(),
                                               candidates["doc_id"].to_pylist(), candidates["text"].to_pylist())
            rerank_s = time.perf_counter() - started
            run = {}
            for q, d, s in zip(candidates["query_id"].to_pylist(), candidates["doc_id"].to_pylist(), scores):
                run.setdefault(q, {})[d] = float(s)
            row.update(rerank_ndcg10=round(evaluate(run, qrels).ndcg_at_10, 4), rerank_missing=missing,
                       rerank_s=round(rerank_s, 1))
        if args.exact_for is None or name in args.exact_for:
            exact_run, exact_qps = timed_run(lambda q, k: exact_search(reader, q, k))
            row.update(exact_ndcg10=round(evaluate(exact_run, qrels).ndcg_at_10, 4), exact_qps=round(exact_qps, 2))
            if args.ivf is None or name in args.ivf:
                searcher = IvfSearcher(reader, args.nprobe, args.candidates)
                ivf_run, ivf_qps = timed_run(searcher.search)
                recall = np.mean([len(set(ivf_run[q]) & set(exact_run[q])) / len(exact_run[q]) for q in ids])
                row.update(ivf_nprobe=args.nprobe,
                           ivf_candidates=searcher.candidates_for(100),
                           ivf_recall100_vs_exact=round(float(recall), 4),
                           ivf_ndcg10=round(evaluate(ivf_run, qrels).ndcg_at_10, 4), ivf_qps=round(ivf_qps, 2))
        rows.append(row)
        print(json.dumps(row), flush=True)
    columns = {"setting": ("setting", "{}"), "tokens_per_doc": ("tokens/doc", "{:.1f}"),
               "bytes_per_doc": ("bytes/doc", "{:,.0f}"), "size_vs_fp16": ("size vs fp16", "{:.3f}"),
               "rerank_ndcg10": ("nDCG@10 rerank BM25 top-100", "{:.4f}"),
               "exact_ndcg10": ("nDCG@10 exact search", "{:.4f}"), "exact_qps": ("exact queries/s", "{:.2f}"),
               "ivf_recall100_vs_exact": ("IVF R@100 vs exact", "{:.4f}"), "ivf_ndcg10": ("nDCG@10 IVF", "{:.4f}"),
               "ivf_qps": ("IVF queries/s", "{:.2f}")}
    print(f"\nSciFact test (300 claims), {MODEL}; BM25 alone nDCG@10 = {bm25:.4f}; load average {load_average()}")
    print(table([{label: fmt.format(r[key]) if key in r else "–" for key, (label, fmt) in columns.items()}
                 for r in rows]))
    if args.json:
        Path(args.json).write_text(json.dumps({"bm25_ndcg10": bm25, "rows": rows}, indent=2))
    return 0


def _groups(table: pa.Table) -> dict[str, dict[str, list]]:
    groups: dict[str, dict[str, list]] = {}
    for q, d, r in zip(*(table[c].to_pylist() for c in ("query_id", "doc_id", "bm25_rank"))):
        g = groups.setdefault(q, {"doc_id": [], "bm25_rank": []})
        g["doc_id"].append(d)
        g["bm25_rank"].append(r)
    return groups


if __name__ == "__main__":
    sys.exit(main())
