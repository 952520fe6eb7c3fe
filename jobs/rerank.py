"""Nightly batch reranking on Ray Data: Parquet in (local or s3://), reranked Parquet out.

Two phases, each resumable unit by unit:
1. Score: input shards (row groups of a file) go to an autoscaling pool of actors that each hold
   one model. An actor validates rows (bad ones to the errors table), scores the rest, and stages
   them as one object split by hash(query_id) into buckets (rayrank/io/staging.py); a marker then
   commits the shard. An actor works on several shards at once (jobs/_phases.py): while one holds
   the model, the next is read, validated and tokenized, and the last one's writes go out.
2. Rank: one task per bucket reads every committed shard's piece of it (one ranged read each), so
   all candidates of a query meet however the input was split, drops duplicate (query_id, doc_id)
   rows to the errors table, ranks each query and publishes `part-NNNNN.parquet`.
The manifest, written last, marks the job finished. A rerun of a killed job skips committed work.

Usage: `rayrank rerank INPUT OUTPUT [options]` or `python -m rayrank.jobs.rerank INPUT OUTPUT [options]`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import pyarrow as pa

import rayrank
from rayrank.cli import command
from rayrank.config import RerankJobConfig, load_yaml, merge_flags, parse_config
from rayrank.extras import engine_needs, need
from rayrank.index.format import check_model, read_manifest
from rayrank.io.staging import pack_buckets, read_piece
from rayrank.io.storage import (count_requests, filesystem, join, put_atomic, retrying, storage_options,
                                write_json_atomic, write_parquet_atomic)
from rayrank.io.tables import Shard, bucket_of, rank_queries, read_shard, split_valid
from rayrank.jobs._output import JobOutput, steady_rate
from rayrank.jobs._phases import Phases, phase_line, summarize
from rayrank.jobs._shards import (Claim, ParquetInput, UnitActor, actor_config, claim, finish, model_record,
                                  run_units)
from rayrank.models import resolve_model
from rayrank.reranker import resolve_engine

INTERNAL = ("_source", "_row", "_seq", "score")


def parse_args(argv: list[str] | None) -> RerankJobConfig:
    parser = argparse.ArgumentParser(prog="rayrank rerank", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", nargs="?", help="Parquet file, directory or glob (local or s3://)")
    parser.add_argument("output", nargs="?", help="output directory (local or s3://)")
    parser.add_argument("--config", help="YAML job config (see configs/); flags override it")
    parser.add_argument("--model", help="Hugging Face id or local directory")
    parser.add_argument("--scorer", choices=["cross-encoder", "late-interaction"])
    parser.add_argument("--backend", choices=["auto", "torch", "onnx", "openvino"])
    parser.add_argument("--quantize", choices=["none", "int8"])
    parser.add_argument("--max-tokens-per-batch", type=int)
    parser.add_argument("--max-length", type=int, help="tokens per input (wins over a checkpoint's saved limit)")
    parser.add_argument("--long-documents", choices=["truncate", "chunk"],
                        help="documents over --max-length: truncate (default) or score their best chunk")
    parser.add_argument("--instruction", help="decoder rerankers (Qwen3-Reranker, mxbai-rerank-v2, bge-reranker-v2-"
                        "gemma): the task instruction in their prompt, e.g. 'Given a question, retrieve passages that "
                        "answer it' (default: the prompt's own)")
    parser.add_argument("--prompt-template", choices=["qwen3-reranker", "mxbai-rerank-v2", "bge-reranker-v2-gemma"],
                        help="a decoder reranker's built-in prompt, for a checkpoint without a chat template that "
                        "renders query/document messages (default: its chat template, or the family its name states)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let a checkpoint with custom code (config.json auto_map) run it; off by default")
    parser.add_argument("--top-n", type=int, help="keep the N best candidates per query")
    parser.add_argument("--actors", help="MIN,MAX actors (autoscaling pool), e.g. 1,4")
    parser.add_argument("--gpus-per-actor", type=float)
    parser.add_argument("--address", help="Ray address: 'auto' joins a running cluster; default starts a local Ray")
    parser.add_argument("--overwrite", action="store_true", help="replace an OUTPUT holding another job's results")
    parser.add_argument("--index", help="late-interaction: read document embeddings from this INDEX_DIR (rayrank index)")
    args = parser.parse_args(argv)

    data = load_yaml(args.config) if args.config else {}
    flags = {"input": args.input, "output": args.output, "top_n": args.top_n, "index": args.index,
             "overwrite": True if args.overwrite else None}
    engine = {"model": args.model, "scorer": args.scorer, "backend": args.backend, "quantize": args.quantize,
              "max_tokens_per_batch": args.max_tokens_per_batch, "max_length": args.max_length,
              "long_documents": args.long_documents, "instruction": args.instruction,
              "prompt_template": args.prompt_template, "trust_remote_code": True if args.trust_remote_code else None}
    cluster = {"address": args.address, "actors": args.actors, "gpus_per_actor": args.gpus_per_actor}
    data = merge_flags(data, flags, {"engine": engine, "cluster": cluster}, args.config)
    config = parse_config(RerankJobConfig, data, args.config or "command-line flags")
    if not config.input or not config.output:
        parser.error("INPUT and OUTPUT are required (as arguments or `input:`/`output:` in --config)")
    return config


class ShardScorer(UnitActor):
    """Ray Data actor: loads the model once, then validates, scores and stages whole shards."""

    def __init__(self, config: dict, in_options: dict, out_options: dict, buckets: int,
                 layouts: dict[str, str], index_options: dict | None = None) -> None:
        self.config = RerankJobConfig.model_validate(config)
        super().__init__(self.config.output, out_options)
        self.reranker = self.load_engine(self.config.engine, self.config.cluster)
        self.fs_in, _ = filesystem(self.config.input, in_options)
        self.requests = count_requests(self.fs_in, self.out.fs)
        self.buckets, self.layouts = buckets, layouts
        self.index = None
        if self.config.index:  # documents come from the index (its model checked by the driver); queries are encoded
            from rayrank.index import IndexReader

            self.index = IndexReader(self.config.index, index_options)

    def work(self, unit: dict[str, Any], phases: Phases) -> dict[str, Any]:
        from rayrank.jobs._ray import node_id

        shard = Shard(**unit)
        fs, sid = self.out.fs, shard.shard_id
        # An attempt marker without a commit marker means an earlier attempt died (killed job, lost node).
        attempt = self.out.stage("attempts", f"{sid}.json")
        retried = retrying(f"checking {attempt}", lambda: fs.exists(attempt))
        retrying(f"writing {attempt}", lambda: write_json_atomic({"node": node_id()}, fs, attempt))
        with phases.timed("read_s"):
            table, layout_errors = retrying(
                f"reading shard {sid} (row groups {list(shard.row_groups)} of {shard.path})",
                lambda: read_shard(self.fs_in, shard, self.layouts[shard.path], self.config.columns))
        with phases.timed("validate_s"):
            valid, invalid = split_valid(table)
            errors = pa.concat_tables([layout_errors, invalid])
        index_missing = None
        with self.gate.engine(phases):
            if self.index is not None:
                from rayrank.index import score_from_index

                scores, index_missing = score_from_index(self.reranker.scorer, self.index,
                                                         valid["query"].to_pylist(), valid["doc_id"].to_pylist(),
                                                         valid["text"].to_pylist())
                result = rayrank.PairScores(scores)
            else:
                result = self.reranker.scorer.score_pairs(valid["query"].to_pylist(), valid["text"].to_pylist())
        with phases.timed("write_s"):
            scored = valid.append_column("score", pa.array(result.scores, pa.float32()))
            data, pieces = pack_buckets(scored, bucket_of(scored["query_id"], self.buckets))
            staged = self.out.stage("scores", f"{sid}.parquet")
            retrying(f"staging shard {sid} to {staged}", lambda: put_atomic(data, fs, staged))
            if errors.num_rows:
                path = self.out.stage("errors", f"{sid}.parquet")
                retrying(f"staging the errors of shard {sid} to {path}", lambda: write_parquet_atomic(errors, fs, path))
        stats = {"shard": sid, "rows_in": table.num_rows + layout_errors.num_rows,
                 "valid": valid.num_rows, "invalid": errors.num_rows, "truncated": result.truncated,
                 "node": node_id(), "retried": retried,
                 # {bucket: [start, end]} byte ranges of the staged object; the actor's requests so far.
                 "pieces": json.dumps(pieces), "staged_objects": 1 + bool(errors.num_rows),
                 "actor_requests": self.requests()}
        if index_missing is not None:
            stats["index_missing"] = index_missing
        return stats


def rank_bucket(config: dict, out_options: dict, bucket: int, pieces: list[tuple[str, int, int]]) -> dict[str, Any]:
    """Rank one bucket from its pieces, (shard id, start, end) of committed shards' staged objects, and publish
    its part file."""
    config_ = RerankJobConfig.model_validate(config)
    fs, root = filesystem(config_.output, out_options)
    requests = count_requests(fs)
    before = requests()
    out = JobOutput(fs, root)
    name = f"{bucket:05d}"
    tables = [retrying(f"reading bucket {bucket} of staged shard {sid}",
                       lambda sid=sid, start=start, end=end: read_piece(fs, out.stage("scores", f"{sid}.parquet"),
                                                                        start, end))
              for sid, start, end in pieces]
    stats = {"bucket": bucket, "rows_ranked": 0, "duplicates": 0, "rows_written": 0, "queries": 0}
    if tables:
        scored = pa.concat_tables(tables, promote_options="permissive")
        keep = [] if config_.keep_text else ["query", "text"]
        passthrough = [c for c in scored.column_names if c not in INTERNAL and c not in ("query_id", "doc_id")
                       and c not in keep]
        ranked, duplicates = rank_queries(scored, config_.top_n, passthrough)
        if duplicates.num_rows:
            path = out.path("_errors", f"duplicates-{name}.parquet")
            retrying(f"writing {path}", lambda: write_parquet_atomic(duplicates, fs, path))
        if ranked.num_rows:
            path = out.path(f"part-{name}.parquet")
            retrying(f"writing {path}", lambda: write_parquet_atomic(ranked, fs, path))
        stats.update(rows_ranked=scored.num_rows - duplicates.num_rows, duplicates=duplicates.num_rows,
                     rows_written=ranked.num_rows, queries=len(set(ranked["query_id"].to_pylist())))
    stats["requests"] = requests() - before  # up to the commit
    retrying(f"committing bucket {bucket}", lambda: out.commit_unit("buckets", name, stats))
    return stats


def pieces_by_bucket(shards: dict[str, dict[str, Any]]) -> dict[int, list[tuple[str, int, int]]]:
    """{bucket: [(shard id, start, end), ...]} from committed shards' markers, in shard id order."""
    pieces: dict[int, list[tuple[str, int, int]]] = {}
    for sid in sorted(shards):
        for bucket, (start, end) in json.loads(shards[sid]["pieces"]).items():
            pieces.setdefault(int(bucket), []).append((sid, int(start), int(end)))
    return pieces


def run(config: RerankJobConfig) -> dict[str, Any]:
    """Run (or resume) the job and return its manifest."""
    in_options = storage_options(config.storage, config.input)
    out_options = storage_options(config.storage, config.output)
    driver_requests = count_requests(filesystem(config.input, in_options)[0], filesystem(config.output, out_options)[0])
    requests_before = driver_requests()
    source = ParquetInput.open(config)
    resolved = resolve_model(config.engine.model_name)
    need(*engine_needs(config.engine))  # here, not in every actor that loads the model
    if config.index:  # here, not in every actor that opens the index
        fs_index, index_root = filesystem(config.index, storage_options(config.storage, config.index))
        check_model(read_manifest(fs_index, index_root), config.index, resolved.name)
    identity = {"inputs": source.sizes, "engine": config.engine.model_dump(),
                "columns": config.columns.model_dump(), "top_n": config.top_n, "keep_text": config.keep_text,
                "shard_rows": config.shard_rows, **({"index": config.index} if config.index else {})}
    job = claim("rerank", config.output, out_options, identity,
                {"buckets": max(1, math.ceil(source.rows / config.rows_per_output_file)),
                 "shard_rows": source.shard_rows(config.shard_rows, config.cluster.actors[1])}, config.overwrite)
    if job.finished is not None:
        return job.finished
    # backend: auto is measured (or read from its cache) once, here, so every actor runs the same setting;
    # the job's identity keeps "auto", so a resume on this machine finds its work.
    engine, backend_choice = resolve_engine(config.engine, resolved)
    config = config.model_copy(update={"engine": engine})

    from rayrank.jobs._ray import alive_nodes, connect

    connect(config.cluster.address)
    nodes_at_start = alive_nodes()
    kwargs = {"config": actor_config(config), "in_options": in_options, "out_options": out_options,
              "buckets": job.state["buckets"], "layouts": source.layouts,
              "index_options": storage_options(config.storage, config.index or "")}
    scored = run_units(job, "rerank", source.shards(job.state["shard_rows"]), ShardScorer, config.cluster, kwargs)
    ranked, rank_requests = rank_buckets(job, config, out_options, scored.done)

    counts, this_run = _counts(scored.done, ranked), scored.this_run
    scored_now = sum(int(d["rows_in"]) for d in this_run)
    cluster = {"nodes_used": len({d["node"] for d in this_run}), "nodes_lost": sorted(nodes_at_start - alive_nodes()),
               "shards_retried": sum(bool(d["retried"]) for d in this_run)}
    manifest = {
        "model": model_record(resolved), "scorer": config.engine.scorer, "backend": config.engine.backend,
        "dtype": config.engine.dtype, "quantize": config.engine.quantize, "backend_choice": backend_choice,
        "input": config.input, "output": config.output, "input_files": len(source.files), "shards": len(scored.done),
        "counts": {**counts, "rows_reused": scored.reused}, "cluster": cluster, "phases": summarize(this_run),
        "storage": _storage(this_run, rank_requests, driver_requests() - requests_before, counts["rows_in"],
                            job.out.fs),
        "files": sorted(p.rsplit("/", 1)[-1] for p in job.out.fs.ls(job.out.root, detail=False)
                        if p.rsplit("/", 1)[-1].startswith("part-")),
    }
    return finish(job, config, manifest, scoring_s=round(scored.seconds, 3),
                  pairs_per_s=round(scored_now / scored.seconds, 2) if scored_now else None,
                  steady_pairs_per_s=steady_rate(this_run))


def rank_buckets(job: Claim, config: RerankJobConfig, out_options: dict, shards: dict[str, dict]
                 ) -> tuple[dict[str, dict], int]:
    """Phase 2: rank every bucket not yet committed (one Ray task each); (every bucket's marker, the tasks'
    object-store requests)."""
    import ray

    ranked = job.out.committed("buckets")
    pieces = pieces_by_bucket(shards)
    task = ray.remote(num_cpus=0.5, max_retries=5)(rank_bucket)
    pending = [task.remote(config.model_dump(), out_options, b, pieces.get(b, []))
               for b in range(job.state["buckets"]) if f"{b:05d}" not in ranked]
    requests = 0
    for stats in ray.get(pending):
        ranked[f"{stats['bucket']:05d}"] = stats
        requests += int(stats["requests"])
    return ranked, requests


def _storage(this_run: list[dict], rank_requests: int, driver_requests: int, rows: int, fs) -> dict[str, Any]:
    """Objects staged, and object-store requests of this run (actors, rank tasks, driver) per million rows.

    An actor's count is its process's total at its last shard's commit (its final marker not included).
    Requests are counted on object stores only (None on a local filesystem).
    """
    from rayrank.io.storage import is_object_store

    by_actor: dict[str, int] = {}
    for unit in this_run:
        by_actor[unit["actor"]] = max(by_actor.get(unit["actor"], 0), int(unit["actor_requests"]))
    requests = sum(by_actor.values()) + rank_requests + driver_requests
    counted = is_object_store(fs)
    return {"staged_objects": sum(int(u["staged_objects"]) for u in this_run),
            "requests": requests if counted else None,
            "requests_per_million_rows": round(requests * 1e6 / rows, 1) if counted and rows else None,
            "requests_by": {"actors": sum(by_actor.values()), "rank_tasks": rank_requests,
                            "driver": driver_requests} if counted else None}


def _counts(shards: dict[str, dict], buckets: dict[str, dict]) -> dict[str, int]:
    rows_in = sum(int(s["rows_in"]) for s in shards.values())
    invalid = sum(int(s["invalid"]) for s in shards.values())
    duplicates = sum(int(b["duplicates"]) for b in buckets.values())
    return {"rows_in": rows_in, "rows_scored": sum(int(b["rows_ranked"]) for b in buckets.values()),
            "rows_rejected": invalid + duplicates, "rows_invalid": invalid, "rows_duplicate": duplicates,
            "rows_written": sum(int(b["rows_written"]) for b in buckets.values()),
            "queries": sum(int(b["queries"]) for b in buckets.values()),
            "truncated": sum(int(s["truncated"]) for s in shards.values()),
            # Candidates scored with --index whose document was not in it (encoded on the fly).
            "index_missing": sum(int(s.get("index_missing", 0)) for s in shards.values())}


def summary(manifest: dict[str, Any]) -> str:
    c, t = manifest["counts"], manifest["timings"]
    rate = (f"{t['pairs_per_s']:,.1f} pairs/s in the scoring phase, {t['steady_pairs_per_s']:,.1f} once actors "
            "were up" if t["pairs_per_s"] else "no new rows scored")
    lines = [
        f"rayrank rerank: {manifest['output']}",
        f"  model          {manifest['model']['name']} ({manifest['scorer']}, {manifest['backend']}, "
        f"from {manifest['model']['source']})",
        f"  rows in        {c['rows_in']:,}  (reused from an earlier run: {c['rows_reused']:,})",
        f"  rows scored    {c['rows_scored']:,}",
        f"  rows rejected  {c['rows_rejected']:,}  ({c['rows_invalid']:,} invalid, {c['rows_duplicate']:,} duplicate;"
        f" see {join(manifest['output'], '_errors')})",
        f"  rows written   {c['rows_written']:,}  in {len(manifest['files'])} file(s)",
        f"  queries        {c['queries']:,}",
        f"  truncated      {c['truncated']:,} pairs longer than the model's max length",
        f"  elapsed        {t['elapsed_s']:.1f} s  ({rate})",
    ]
    if manifest.get("phases", {}).get("actors"):  # none when every shard was reused
        lines.append(phase_line(manifest["phases"]))
    if store := manifest.get("storage"):
        line = f"  staging        {store['staged_objects']:,} object(s) staged"
        if store["requests"] is not None:
            line += (f"; {store['requests']:,} object-store requests "
                     f"({store['requests_per_million_rows']:,.0f} per M rows)")
        lines.append(line)
    cluster = manifest["cluster"]
    line = f"  ray            {cluster['nodes_used']} node(s) scored"
    if cluster["nodes_lost"]:
        line += f"; {len(cluster['nodes_lost'])} node(s) lost mid-job"
    if cluster["shards_retried"]:
        line += f"; {cluster['shards_retried']} shard(s) re-run after a lost attempt (no row counted twice)"
    lines.append(line)
    return "\n".join(lines)


@command("rerank")
def main(argv: list[str] | None = None) -> int:
    print(summary(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
