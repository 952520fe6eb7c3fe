"""Top-k documents per query over a whole late-interaction index, in the rerank output layout.

Queries (Parquet `query_id`, `query`) are encoded once by the index's model; documents are read
from INDEX_DIR (never re-encoded). `--method exact` is brute-force MaxSim streamed over the index in
bounded memory; `--method ivf` takes candidates from the centroid postings, then scores them exactly.
OUTPUT gets `part-00000.parquet` (`query_id`, `doc_id`, `score`, `rank`), `_errors/` and `_manifest.json`,
so `rayrank eval OUTPUT --qrels ...` reads it like a rerank output. Runs in one process: the index
is memory-mapped (or streamed from S3), so no Ray cluster is needed.

Usage: `rayrank search INDEX_DIR QUERIES OUTPUT --k 100` or `python -m rayrank.jobs.search ...`.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import pyarrow as pa

import rayrank
from rayrank.cli import command
from rayrank.config import SearchJobConfig, load_yaml, merge_flags, parse_config
from rayrank.index import IndexReader, IvfSearcher, exact_search
from rayrank.io.storage import filesystem, list_parquet, storage_options, write_parquet_atomic
from rayrank.io.tables import QUERY_KEYS, read_unique
from rayrank.jobs._flags import ENGINE_FLAGS, add_engine_flags, flag_values
from rayrank.jobs._shards import claim, finish

RESULT_SCHEMA = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("score", pa.float32()),
                           ("rank", pa.int32())])


def parse_args(argv: list[str] | None) -> SearchJobConfig:
    parser = argparse.ArgumentParser(prog="rayrank search", description=__doc__.split("\n\n")[0])
    parser.add_argument("index", nargs="?", help="INDEX_DIR built by `rayrank index` (local or s3://)")
    parser.add_argument("input", nargs="?", help="QUERIES: Parquet with query_id, query (local or s3://)")
    parser.add_argument("output", nargs="?", help="OUTPUT directory (local or s3://)")
    parser.add_argument("--config", help="YAML config; flags override it")
    parser.add_argument("--top-n", "--k", dest="k", type=int,
                        help=f"documents per query (default {SearchJobConfig.model_fields['k'].default})")
    parser.add_argument("--method", choices=["exact", "ivf"], help="exact MaxSim over every document, or IVF "
                        f"candidates then exact (default {SearchJobConfig.model_fields['method'].default})")
    parser.add_argument("--nprobe", type=int, help="ivf: centroids probed per query token")
    parser.add_argument("--candidates", type=int,
                        help="ivf: documents scored exactly per query (default: a fifth of the index, at most 3,072)")
    add_engine_flags(parser, scorer=False, model_help="the query encoder: the index's model (default: the one the "
                     "index records)")
    parser.add_argument("--overwrite", action="store_true", help="replace an OUTPUT holding another job's results")
    args = parser.parse_args(argv)
    data = load_yaml(args.config) if args.config else {}
    flags = {"index": args.index, "input": args.input, "output": args.output, "k": args.k, "method": args.method,
             "nprobe": args.nprobe, "candidates": args.candidates, "overwrite": True if args.overwrite else None}
    data = merge_flags(data, flags, {"engine": flag_values(args, ENGINE_FLAGS)}, args.config)
    config = parse_config(SearchJobConfig, data, args.config or "command-line flags")
    if not (config.index and config.input and config.output):
        parser.error("INDEX_DIR, QUERIES and OUTPUT are required")
    return config


def read_queries(config: SearchJobConfig, options: dict) -> tuple[pa.Table, pa.Table, int]:
    """(valid queries with unique ids, errors, rows read)."""
    fs, root = filesystem(config.input, options)
    return read_unique(fs, list_parquet(fs, root), config.columns, QUERY_KEYS, "query_id")


def run(config: SearchJobConfig) -> dict[str, Any]:
    """Run the search (one unit: every query) and return its manifest; a rerun of a finished one does nothing."""
    reader = IndexReader(config.index, storage_options(config.storage, config.index))
    engine = config.engine.model_copy(update={"model": config.engine.model or reader.manifest["model"]["name"]})
    reader.check_model(rayrank.resolve_model(engine.model_name).name)
    queries, errors, rows_in = read_queries(config, storage_options(config.storage, config.input))
    # an updated index (another generation) is another search; a fresh build stays generation 0
    identity = {"kind": "search", "index": reader.manifest["job_id"], "input": config.input,
                **({"index_generation": reader.generation} if reader.generation else {}),
                **config.model_dump(include={"k", "method", "nprobe", "candidates"}), "engine": engine.model_dump()}
    job = claim("search", config.output, storage_options(config.storage, config.output), identity, {},
                config.overwrite)
    if job.finished is not None:
        return job.finished

    scorer = rayrank.Reranker.from_config(engine).scorer
    encode_started = time.perf_counter()
    embeddings = scorer.encode_queries(queries["query"].to_pylist())
    search_started = time.perf_counter()
    if config.method == "ivf":
        hits = IvfSearcher(reader, config.nprobe, config.candidates).search(embeddings, config.k)
    else:
        hits = exact_search(reader, embeddings, config.k, max_block_bytes=config.max_block_mb * 1024**2)
    search_seconds = time.perf_counter() - search_started
    qids = queries["query_id"].to_pylist()
    result = pa.table({
        "query_id": [q for q, r in zip(qids, hits) for _ in r.doc_ids],
        "doc_id": [d for r in hits for d in r.doc_ids],
        "score": np.concatenate([r.scores for r in hits]).astype(np.float32) if hits else np.empty(0, np.float32),
        "rank": np.concatenate([np.arange(1, len(r) + 1) for r in hits]).astype(np.int32)
        if hits else np.empty(0, np.int32),
    }, schema=RESULT_SCHEMA)
    write_parquet_atomic(result, job.out.fs, job.out.path("part-00000.parquet"))
    if errors.num_rows:
        write_parquet_atomic(errors, job.out.fs, job.out.path("_errors", "invalid-queries.parquet"))
    manifest = {
        "kind": "search", "index": config.index, "index_job_id": reader.manifest["job_id"],
        "index_generation": reader.generation,
        "model": reader.manifest["model"], "method": config.method, "k": config.k, "input": config.input,
        "output": config.output, "files": ["part-00000.parquet"],
        "counts": {"rows_in": rows_in, "queries": len(qids), "rows_rejected": errors.num_rows,
                   "rows_written": result.num_rows, "index_docs": len(reader)},
    }
    return finish(job, config, manifest, query_encoding_s=round(search_started - encode_started, 3),
                  search_s=round(search_seconds, 3), ms_per_query=round(1000 * search_seconds / max(len(qids), 1), 2))


def summary(manifest: dict[str, Any]) -> str:
    c, t = manifest["counts"], manifest["timings"]
    return (f"rayrank search: {manifest['output']}\n  {c['queries']:,} queries x {c['index_docs']:,} documents "
            f"({manifest['method']}), top {manifest['k']}; {c['rows_rejected']:,} rows rejected\n"
            f"  search {t['search_s']:.1f} s ({t['ms_per_query']:.1f} ms/query), elapsed {t['elapsed_s']:.1f} s")


@command("search")
def main(argv: list[str] | None = None) -> int:
    print(summary(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
