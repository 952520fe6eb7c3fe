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

Candidates given by id (`--corpus`) are joined to their text before phase 1, in the same units: a
split pass stages every shard of the log and of the corpus by hash(doc_id), and phase 1 runs one
unit per doc-id bucket (`BucketSplitter`, `join_bucket`). A TREC run as INPUT is staged as Parquet
first (`stage_run`). With `--cache`, phase 1 scores only the pairs the score cache lacks.
`--partitions` runs each KEY=VALUE partition of INPUT as such a job and publishes it alone
(`run_partitions`).

Usage: `rayrank rerank INPUT OUTPUT [options]` or `python -m rayrank.jobs.rerank INPUT OUTPUT [options]`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import threading
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayrank.cli import command
from rayrank.config import Columns, RerankJobConfig, load_yaml, merge_flags, parse_config
from rayrank.errors import ConfigError, InputNotFoundError, InputSchemaError, OutputConflictError
from rayrank.extras import engine_needs, need
from rayrank.io.staging import pack_buckets, read_piece
from rayrank.io.storage import (count_requests, filesystem, is_object_store, join, list_parquet, put_atomic, read_json,
                                retrying, storage_options, write_json_atomic, write_parquet_atomic)
from rayrank.io.tables import (DOC_KEYS, KEYS, LOG_KEYS, Shard, bucket_of, error_rows, rank_queries, read_shard,
                               split_duplicates, split_valid)
from rayrank.io.trec import candidates_from_run, is_parquet
from rayrank.jobs._flags import CLUSTER_FLAGS, ENGINE_FLAGS, add_cluster_flags, add_engine_flags, flag_values
from rayrank.jobs._output import JobOutput, steady_rate
from rayrank.jobs._phases import Phases, phase_line, summarize
from rayrank.jobs._shards import (Claim, ParquetInput, UnitActor, actor_config, claim, finish, model_record,
                                  run_units, shard_rows)
from rayrank.models import DEFAULT_CROSS_ENCODER, DEFAULT_LATE_INTERACTION, resolve_model

INTERNAL = ("_source", "_row", "_seq", "score")


def parse_args(argv: list[str] | None) -> RerankJobConfig:
    parser = argparse.ArgumentParser(prog="rayrank rerank", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", nargs="?", help="Parquet file, directory or glob (local or s3://)")
    parser.add_argument("output", nargs="?", help="output directory (local or s3://)")
    parser.add_argument("--config", help="YAML job config (see configs/); flags override it")
    add_engine_flags(parser, model_help="a Hugging Face id or a local directory (default: the scorer's, "
                     f"{DEFAULT_CROSS_ENCODER} or {DEFAULT_LATE_INTERACTION})")
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
    parser.add_argument("--top-n", type=int, help="keep the N best candidates per query (default: all)")
    add_cluster_flags(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an OUTPUT holding another job's results")
    parser.add_argument("--index", help="late-interaction: read document embeddings from this INDEX_DIR (rayrank index)"
                        "; INPUT then needs no text column (default: none, documents are encoded from their text)")
    parser.add_argument("--corpus", help="Parquet corpus (doc_id, text; local or s3://) joined by doc_id to an INPUT "
                        "without text; names remappable under `corpus:` in --config (default: none, text inline)")
    parser.add_argument("--queries", help="Parquet queries (query_id, query) when INPUT is a TREC run file "
                        "'qid Q0 docid rank score tag' (default: none; INPUT is Parquet)")
    parser.add_argument("--partitions", metavar="new|KEY=VALUE", help="INPUT is a Hive-partitioned dataset "
                        "(e.g. dt=2026-12-06/ folders): 'new' runs the partitions not yet published in OUTPUT for this "
                        "model setting, KEY=VALUE that one; each is published as OUTPUT/KEY=VALUE/ (default: none, "
                        "INPUT is one table)")
    parser.add_argument("--overwrite-partition", action="store_true",
                        help="with --partitions KEY=VALUE: score it again and replace the published one (default: off)")
    parser.add_argument("--cache", metavar="DIR", help="score cache across runs (local or s3://): pairs scored "
                        "before with the same model setting are read, new ones written back (default: no cache)")
    args = parser.parse_args(argv)

    data = load_yaml(args.config) if args.config else {}
    flags = {"input": args.input, "output": args.output, "top_n": args.top_n, "index": args.index,
             "queries": args.queries, "overwrite": True if args.overwrite else None, "partitions": args.partitions,
             "overwrite_partition": True if args.overwrite_partition else None}
    engine = {**flag_values(args, ENGINE_FLAGS), "long_documents": args.long_documents,
              "instruction": args.instruction, "prompt_template": args.prompt_template,
              "trust_remote_code": True if args.trust_remote_code else None}
    cluster = flag_values(args, CLUSTER_FLAGS)
    for key in ("cache", "corpus"):  # `cache: DIR` in a file is short for `cache: {dir: DIR}`
        if isinstance(data.get(key), str):
            data[key] = {"dir" if key == "cache" else "path": data[key]}
    sections = {"engine": engine, "cluster": cluster, "cache": {"dir": args.cache}, "corpus": {"path": args.corpus}}
    data = merge_flags(data, flags, sections, args.config)
    config = parse_config(RerankJobConfig, data, args.config or "command-line flags")
    if not config.input or not config.output:
        parser.error("INPUT and OUTPUT are required (as arguments or `input:`/`output:` in --config)")
    return config


class ShardScorer(UnitActor):
    """Ray Data actor: loads the model once, then validates, scores and stages whole units.

    A unit is an input shard, or (with a corpus) one doc-id bucket: its pieces of the split log and of
    the split corpus, joined here (`join_bucket`). With a cache, pairs are looked up before the model
    and only the misses (each once) are scored; their scores are written back with the shard.
    """

    def __init__(self, config: dict, in_options: dict, out_options: dict, buckets: int,
                 layouts: dict[str, str], index_options: dict | None = None, keys: tuple[str, ...] = KEYS,
                 cache: dict[str, Any] | None = None) -> None:
        self.config = RerankJobConfig.model_validate(config)
        super().__init__(self.config.output, out_options)
        self.reranker = self.load_engine(self.config.engine, self.config.cluster)
        self.fs_in, _ = filesystem(self.config.input, in_options)
        self.requests = count_requests(self.fs_in, self.out.fs)
        self.buckets, self.layouts, self.keys = buckets, layouts, tuple(keys)
        self.index = None
        if self.config.index:  # documents come from the index (its model checked by the driver); queries are encoded
            from rayrank.index import IndexReader

            self.index = IndexReader(self.config.index, index_options)
        self.cache = None
        if cache is not None:  # fingerprint and settings computed once by the driver
            from rayrank.score_cache import ScoreCache

            self.cache = ScoreCache(cache["dir"], cache["fingerprint"], storage_options=cache["options"],
                                    settings=cache["settings"], max_memory_bytes=cache["max_memory_bytes"])
        # Shard calls run on several threads (cluster.prefetch_shards); a ScoreCache is not thread-safe: two
        # lookups refreshing one bucket at once could each take the other's segments as read and miss them.
        self.cache_lock = threading.Lock()

    def work(self, unit: dict[str, Any], phases: Phases) -> dict[str, Any]:
        from rayrank.jobs._ray import node_id

        fs, sid = self.out.fs, unit["shard_id"]
        # An attempt marker without a commit marker means an earlier attempt died (killed job, lost node).
        attempt = self.out.stage("attempts", f"{sid}.json")
        retried = retrying(f"checking {attempt}", lambda: fs.exists(attempt))
        retrying(f"writing {attempt}", lambda: write_json_atomic({"node": node_id()}, fs, attempt))
        extra: dict[str, Any] = {}
        if "bucket" in unit:  # a doc-id bucket of a corpus join: read already validated, joined here
            with phases.timed("read_s"):
                log, corpus = read_split(self.out, unit["log"]), read_split(self.out, unit["corpus"])
            with phases.timed("validate_s"):
                valid, errors, corpus_duplicates = join_bucket(log, corpus, self.config.corpus.path)
            rows_in = 0  # counted by the split units
            extra["corpus_duplicates"] = corpus_duplicates
        else:
            shard = Shard(**unit)
            with phases.timed("read_s"):
                table, layout_errors = retrying(
                    f"reading shard {sid} (row groups {list(shard.row_groups)} of {shard.path})",
                    lambda: read_shard(self.fs_in, shard, self.layouts[shard.path], self.config.columns, self.keys))
            with phases.timed("validate_s"):
                valid, invalid = split_valid(table, self.keys)
                errors = pa.concat_tables([layout_errors, invalid])
            rows_in = table.num_rows + layout_errors.num_rows
        if self.index is not None and "text" not in valid.column_names:
            valid, unindexed = self._indexed(valid)
            errors = pa.concat_tables([errors, unindexed])
        if self.index is not None and self.index.deleted:
            valid, deleted = self._undeleted(valid)
            errors = pa.concat_tables([errors, deleted])
        scores, truncated, index_missing = self._score(valid, phases, extra)
        with phases.timed("write_s"):
            scored = valid.append_column("score", pa.array(scores, pa.float32()))
            data, pieces = pack_buckets(scored, bucket_of(scored["query_id"], self.buckets))
            staged = self.out.stage("scores", f"{sid}.parquet")
            retrying(f"staging shard {sid} to {staged}", lambda: put_atomic(data, fs, staged))
            if errors.num_rows:
                path = self.out.stage("errors", f"{sid}.parquet")
                retrying(f"staging the errors of shard {sid} to {path}", lambda: write_parquet_atomic(errors, fs, path))
        # Corpus duplicates are error rows too, but not rows of INPUT: counted apart.
        invalid = errors.num_rows - extra.get("corpus_duplicates", 0)
        stats = {"shard": sid, "rows_in": rows_in, "valid": valid.num_rows, "invalid": invalid,
                 "truncated": truncated, "node": node_id(), "retried": retried,
                 # {bucket: [start, end]} byte ranges of the staged object; the actor's requests so far.
                 "pieces": json.dumps(pieces), "staged_objects": 1 + bool(errors.num_rows),
                 "actor_requests": self.requests(), **extra}
        if index_missing is not None:
            stats["index_missing"] = index_missing
        return stats

    def _score(self, valid: pa.Table, phases: Phases, stats: dict[str, Any]) -> tuple[np.ndarray, int, int | None]:
        """(every valid row's score, pairs truncated, pairs whose document the index lacked): the cache's
        answers and the model's scores of the rest, each distinct pair scored once; new scores go to the cache."""
        queries = valid["query"].to_pylist()
        # Without text (documents from an index), a document is its id: the fingerprint names the index.
        documents = valid["text"].to_pylist() if "text" in valid.column_names else valid["doc_id"].to_pylist()
        pairs, todo = None, np.arange(valid.num_rows)
        if self.cache is not None:
            with phases.timed("cache_s"), self.cache_lock:
                corrupt_before = len(self.cache.corrupt)
                pairs = self.cache.lookup(queries, documents)
                corrupt = self.cache.corrupt[corrupt_before:]
            todo = pairs.todo
        index_missing = None
        with self.gate.engine(phases):
            rows = todo.tolist()
            if self.index is not None:
                from rayrank.index import score_from_index

                doc_ids = valid["doc_id"].to_pylist()
                new, index_missing = score_from_index(
                    self.reranker.scorer, self.index, [queries[i] for i in rows], [doc_ids[i] for i in rows],
                    [documents[i] for i in rows] if "text" in valid.column_names else [""] * len(rows))
                truncated = 0
            else:
                result = self.reranker.scorer.score_pairs([queries[i] for i in rows], [documents[i] for i in rows])
                new, truncated = result.scores, result.truncated
        stats["pairs_scored"] = len(rows)
        if pairs is None:
            return np.asarray(new, dtype=np.float32), truncated, index_missing
        with phases.timed("cache_s"), self.cache_lock:
            scores = self.cache.add(pairs, new)
        stats.update(cache_hits=pairs.hits, cache_repeats=pairs.repeats, cache_corrupt=json.dumps(corrupt))
        return scores, truncated, index_missing

    def _indexed(self, valid: pa.Table) -> tuple[pa.Table, pa.Table]:
        """(rows whose document the index holds, error rows for the others): without text, a document
        missing from the index cannot be encoded."""
        held = np.array([d in self.index for d in valid["doc_id"].to_pylist()], dtype=bool)
        lost = np.flatnonzero(~held)
        reasons = [f"doc_id {d!r} is not in the index {self.config.index} and the input has no text to encode it"
                   for d in valid["doc_id"].take(lost).to_pylist()]
        errors = error_rows(valid.take(lost), reasons, valid["_source"].take(lost).to_pylist(),
                            valid["_row"].take(lost))
        return valid.filter(pa.array(held)), errors


    def _undeleted(self, valid: pa.Table) -> tuple[pa.Table, pa.Table]:
        """(rows whose document was not deleted from the index, error rows for the others): a deleted document
        (`rayrank index delete`) is never scored again, not even from the input's text."""
        gone = np.array([d in self.index.deleted for d in valid["doc_id"].to_pylist()], dtype=bool)
        lost = np.flatnonzero(gone)
        reasons = [f"doc_id {d!r} was deleted from the index {self.config.index}"
                   for d in valid["doc_id"].take(lost).to_pylist()]
        errors = error_rows(valid.take(lost), reasons, valid["_source"].take(lost).to_pylist(),
                            valid["_row"].take(lost))
        return valid.filter(pa.array(~gone)), errors


class BucketSplitter(UnitActor):
    """Ray Data actor of a corpus join's first pass: reads one shard of the log or of the corpus,
    moves invalid rows to the errors table and stages the rest as one object split by hash(doc_id)
    into the join's buckets (rayrank/io/staging.py), their byte ranges in the unit's marker."""

    loads_model = False

    def __init__(self, output: str, out_options: dict, sources: dict[str, dict], buckets: int) -> None:
        super().__init__(output, out_options)
        self.sources, self.buckets = sources, buckets

    def work(self, unit: dict[str, Any], phases: Phases) -> dict[str, Any]:
        source = self.sources[unit["side"]]
        shard, uid = Shard(**unit["shard"]), unit["shard_id"]
        fs_in, _ = filesystem(source["url"], source["options"])
        columns, keys = Columns(**source["columns"]), tuple(source["keys"])
        with phases.timed("read_s"):
            table, layout_errors = retrying(
                f"reading shard {uid} (row groups {list(shard.row_groups)} of {shard.path})",
                lambda: read_shard(fs_in, shard, "long", columns, keys))
        with phases.timed("validate_s"):
            valid, invalid = split_valid(table, keys)
            errors = pa.concat_tables([layout_errors, invalid])
            if unit["side"] == "corpus":  # only what the join needs
                valid = valid.select(["doc_id", "text", "_source", "_row", "_seq"])
        with phases.timed("write_s"):
            data, pieces = pack_buckets(valid, bucket_of(valid["doc_id"], self.buckets))
            staged = self.out.stage("split", f"{uid}.parquet")
            retrying(f"staging shard {uid} to {staged}", lambda: put_atomic(data, self.out.fs, staged))
            if errors.num_rows:
                path = self.out.stage("errors", f"{uid}.parquet")
                retrying(f"staging the errors of shard {uid} to {path}",
                         lambda: write_parquet_atomic(errors, self.out.fs, path))
        from rayrank.jobs._ray import node_id

        return {"shard": uid, "side": unit["side"], "rows_in": table.num_rows + layout_errors.num_rows,
                "invalid": errors.num_rows, "doc_pieces": json.dumps(pieces), "node": node_id()}


def read_split(out: JobOutput, pieces: list[tuple[str, int, int]]) -> pa.Table | None:
    """One join bucket's pieces of split units' staged objects, concatenated (None when there are none)."""
    tables = [retrying(f"reading a piece of split unit {uid}",
                       lambda uid=uid, start=start, end=end: read_piece(out.fs, out.stage("split", f"{uid}.parquet"),
                                                                        start, end))
              for uid, start, end in pieces]
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def join_bucket(log: pa.Table | None, corpus: pa.Table | None, corpus_path: str) -> tuple[pa.Table, pa.Table, int]:
    """(log rows with their document's `text`, error rows, corpus duplicates) for one doc-id bucket.

    Of corpus rows sharing a doc_id the first (by file and row) is kept; the others are error rows
    whose reason names the kept row. A log row whose doc_id is not a valid row of the corpus is an error row.
    """
    if log is None:
        log = pa.table({k: pa.array([], pa.string()) for k in (*LOG_KEYS, "_source")}).append_column(
            "_row", pa.array([], pa.int64())).append_column("_seq", pa.array([], pa.int64()))
    if corpus is None:
        corpus = pa.table({"doc_id": pa.array([], pa.string()), "text": pa.array([], pa.string()),
                           "_source": pa.array([], pa.string()), "_row": pa.array([], pa.int64()),
                           "_seq": pa.array([], pa.int64())})
    corpus, duplicates = split_duplicates(corpus, ("doc_id",))
    at = pc.index_in(log["doc_id"], value_set=corpus["doc_id"].combine_chunks())
    missing = at.is_null().to_numpy(zero_copy_only=False)
    lost = np.flatnonzero(missing)
    reasons = [f"doc_id {d!r} is not a valid row of the corpus {corpus_path}"
               for d in log["doc_id"].take(lost).to_pylist()]
    errors = error_rows(log.take(lost), reasons, log["_source"].take(lost).to_pylist(), log["_row"].take(lost))
    found = log.filter(pa.array(~missing))
    if "text" in found.column_names:
        found = found.drop_columns(["text"])
    joined = found.append_column("text", corpus["text"].take(at.filter(pa.array(~missing))))
    return joined, pa.concat_tables([errors, duplicates]), duplicates.num_rows


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


@dataclass
class Inputs:
    """What the job reads, opened and checked on the driver before Ray starts.

    `log` is INPUT's Parquet (None for a TREC run, staged as Parquet once OUTPUT is claimed), `keys` the
    columns its rows must have, `corpus` the corpus's Parquet, `run` a TREC run's candidates and errors.
    """

    log: ParquetInput | None
    keys: tuple[str, ...]
    corpus: ParquetInput | None
    run: tuple[pa.Table, pa.Table] | None
    identity: dict[str, Any]

    @property
    def rows(self) -> int:
        return self.run[0].num_rows if self.run is not None else self.log.rows


def open_inputs(config: RerankJobConfig) -> Inputs:
    """Open INPUT (Parquet or a TREC run, told apart by content), the queries and the corpus; refuse a
    combination that cannot give every candidate its text."""
    trec = is_trec_run(config.input, storage_options(config.storage, config.input))
    if config.queries and not trec:
        raise ConfigError(f"queries: {config.queries} gives query text to a TREC run, but INPUT {config.input} is "
                          "Parquet (with a query column); drop --queries")
    if trec and not config.queries:
        raise ConfigError(f"INPUT {config.input} is a TREC run, which has no query text: pass --queries QUERIES "
                          "(Parquet query_id, query)")
    if trec and not (config.corpus or config.index):
        raise ConfigError(f"INPUT {config.input} is a TREC run, which has no document text: pass --corpus CORPUS "
                          "(Parquet doc_id, text) or, for late interaction, --index INDEX_DIR")
    corpus = None
    if config.corpus:
        corpus = ParquetInput.open(config.model_copy(update={"input": config.corpus.path, "columns": Columns(
            doc_id=config.corpus.doc_id, text=config.corpus.text)}), DOC_KEYS)
    identity: dict[str, Any] = {"corpus": corpus.sizes} if corpus else {}
    if trec:
        options = storage_options(config.storage, config.queries)
        candidates, errors = candidates_from_run(config.input, config.queries, options, config.columns)
        fs, path = filesystem(config.input, storage_options(config.storage, config.input))
        fs_q, queries = filesystem(config.queries, options)
        identity.update(inputs=[(config.input, fs.size(path))],
                        queries=[(f, fs_q.size(f)) for f in list_parquet(fs_q, queries)])
        return Inputs(None, LOG_KEYS, corpus, (candidates, errors), identity)
    if corpus:
        log, keys = ParquetInput.open(config, LOG_KEYS), LOG_KEYS
        for path in log.files:  # the join adds `text`: one in INPUT too would leave two texts to choose from
            with log.fs.open(path, "rb") as handle:
                if config.columns.text in pq.ParquetFile(handle).schema_arrow.names:
                    raise InputSchemaError(f"{path} has a {config.columns.text!r} column and a corpus was given: "
                                           "drop --corpus to score the inline text, or drop the column")
    elif config.index:  # documents come from the index: text is needed only for documents it lacks
        try:
            log, keys = ParquetInput.open(config), KEYS
        except InputSchemaError:
            log, keys = ParquetInput.open(config, LOG_KEYS), LOG_KEYS
    else:
        log, keys = ParquetInput.open(config), KEYS
    identity["inputs"] = log.sizes
    return Inputs(log, keys, corpus, None, identity)


def is_trec_run(url: str, options: dict[str, Any]) -> bool:
    """Whether INPUT is one file that is not Parquet, which the job reads as a TREC run (as `rayrank eval` does)."""
    fs, path = filesystem(url, options)
    if any(ch in path for ch in "*?[") or not fs.isfile(path):
        return False
    return not is_parquet(url, options)


def stage_run(job: Claim, config: RerankJobConfig, run: tuple[pa.Table, pa.Table]) -> RerankJobConfig:
    """Stage a TREC run's candidates in OUTPUT as Parquet (once: a resumed job reads the same file) and
    publish its error rows; returns the config whose INPUT is the staged file."""
    fs, candidates, errors = job.out.fs, *run
    staged = job.out.stage("input", "run.parquet")
    if not fs.exists(staged):
        retrying(f"staging the run's candidates to {staged}", lambda: write_parquet_atomic(candidates, fs, staged))
    if errors.num_rows:
        path = job.out.path("_errors", "invalid-run.parquet")
        retrying(f"writing {path}", lambda: write_parquet_atomic(errors, fs, path))
    return config.model_copy(update={"input": join(config.output, "_staging", "input", "run.parquet"),
                                     "columns": Columns()})


def cache_setup(config: RerankJobConfig, resolved, index_manifest: dict | None) -> dict[str, Any] | None:
    """The actors' cache arguments: the fingerprint of the resolved engine (backend: auto already
    measured), the weights' content digest and, with an index, which index build and generation."""
    if config.cache is None:
        return None
    from rayrank.index.format import generation
    from rayrank.score_cache import engine_fingerprint, fingerprint_settings, weights_digest

    weights = weights_digest(resolved.path)
    device = "cuda" if config.cluster.gpus_per_actor else "cpu"
    extra = None
    if index_manifest is not None:
        extra = {"index": config.index, "index_job": index_manifest.get("job_id"),
                 "generation": generation(index_manifest)}
    return {"dir": config.cache.dir, "options": storage_options(config.storage, config.cache.dir),
            "fingerprint": engine_fingerprint(config.engine, weights, device=device, extra=extra),
            "settings": fingerprint_settings(config.engine, weights, device=device, extra=extra),
            "max_memory_bytes": config.cache.max_memory_bytes}


def split_units(log: ParquetInput, corpus: ParquetInput, log_rows: int, corpus_rows: int) -> dict[str, str]:
    """The join's first pass: every shard of the log and of the corpus as a unit of `BucketSplitter`."""
    units = {}
    for side, source, rows in (("log", log, log_rows), ("corpus", corpus, corpus_rows)):
        for sid, shard in source.shards(rows).items():
            uid = f"{side}-{sid}"
            units[uid] = json.dumps({"shard_id": uid, "side": side, "shard": json.loads(shard)})
    return units


def join_units(split: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The join's second pass: one unit per doc-id bucket holding log rows, naming its pieces of the split
    log and corpus (from the split units' markers, so a resumed job plans the same units)."""
    buckets: dict[int, dict[str, list]] = {}
    for uid in sorted(split):
        side = split[uid]["side"]
        for bucket, (start, end) in json.loads(split[uid]["doc_pieces"]).items():
            buckets.setdefault(int(bucket), {"log": [], "corpus": []})[side].append((uid, int(start), int(end)))
    return {f"join-{b:05d}": json.dumps({"shard_id": f"join-{b:05d}", "bucket": b, **sides})
            for b, sides in sorted(buckets.items()) if sides["log"]}


def run(config: RerankJobConfig) -> dict[str, Any]:
    """Run (or resume) the job and return its manifest."""
    in_options = storage_options(config.storage, config.input)
    out_options = storage_options(config.storage, config.output)
    driver_requests = count_requests(filesystem(config.input, in_options)[0], filesystem(config.output, out_options)[0])
    requests_before = driver_requests()
    inputs = open_inputs(config)
    resolved = resolve_model(config.engine.model_name)
    need(*engine_needs(config.engine))  # here, not in every actor that loads the model
    # Imported here: they load torch, which the split actors and rank tasks (this module's too) never need.
    from rayrank.index.format import check_model, read_manifest
    from rayrank.reranker import resolve_engine

    index_manifest = None
    if config.index:  # here, not in every actor that opens the index
        fs_index, index_root = filesystem(config.index, storage_options(config.storage, config.index))
        index_manifest = read_manifest(fs_index, index_root)
        check_model(index_manifest, config.index, resolved.name)
    actors = config.cluster.actors[1]
    identity = {**inputs.identity, "engine": config.engine.model_dump(),
                "columns": config.columns.model_dump(), "top_n": config.top_n, "keep_text": config.keep_text,
                "shard_rows": config.shard_rows, **({"index": config.index} if config.index else {}),
                **({"corpus_columns": config.corpus.model_dump(exclude={"path"}),
                    "corpus_bucket_rows": config.corpus_bucket_rows} if config.corpus else {})}
    state = {"buckets": max(1, math.ceil(inputs.rows / config.rows_per_output_file)),
             "shard_rows": shard_rows(inputs.rows, config.shard_rows, actors)}
    if inputs.corpus is not None:
        # Join buckets: at most corpus_bucket_rows documents and about shard_rows log rows each.
        state.update(doc_buckets=max(math.ceil(inputs.corpus.rows / config.corpus_bucket_rows),
                                     math.ceil(inputs.rows / state["shard_rows"]), 1),
                     corpus_shard_rows=shard_rows(inputs.corpus.rows, config.shard_rows, actors))
    job = claim("rerank", config.output, out_options, identity, state, config.overwrite)
    if job.finished is not None:
        return job.finished
    # backend: auto is measured (or read from its cache) once, here, so every actor runs the same setting;
    # the job's identity keeps "auto", so a resume on this machine finds its work.
    engine, backend_choice = resolve_engine(config.engine, resolved)
    reported = config = config.model_copy(update={"engine": engine})
    cache = cache_setup(config, resolved, index_manifest)
    log = inputs.log
    if inputs.run is not None:
        config = stage_run(job, config, inputs.run)
        in_options = out_options
        log = ParquetInput.open(config, LOG_KEYS)

    from rayrank.jobs._ray import alive_nodes, connect

    connect(config.cluster.address)
    nodes_at_start = alive_nodes()
    split = None
    if inputs.corpus is not None:
        sources = {"log": {"url": config.input, "options": in_options, "columns": config.columns.model_dump(),
                           "keys": LOG_KEYS},
                   "corpus": {"url": config.corpus.path, "options": inputs.corpus.in_options,
                              "columns": Columns(doc_id=config.corpus.doc_id, text=config.corpus.text).model_dump(),
                              "keys": DOC_KEYS}}
        split = run_units(job, "rerank: join", split_units(log, inputs.corpus, job.state["shard_rows"],
                                                           job.state["corpus_shard_rows"]),
                          BucketSplitter, config.cluster,
                          {"output": config.output, "out_options": out_options, "sources": sources,
                           "buckets": job.state["doc_buckets"]})
        units = join_units(split.done)
    else:
        units = log.shards(job.state["shard_rows"])
    kwargs = {"config": actor_config(config), "in_options": in_options, "out_options": out_options,
              "buckets": job.state["buckets"], "layouts": log.layouts, "keys": inputs.keys, "cache": cache,
              "index_options": storage_options(config.storage, config.index or "")}
    counted = "valid" if split else "rows_in"  # join units read no INPUT rows (the split did): they count valid ones
    scored = run_units(job, "rerank", units, ShardScorer, config.cluster, kwargs, count_key=counted)
    ranked, rank_requests = rank_buckets(job, config, out_options, scored.done)
    pruned = None
    if config.cache and (config.cache.max_age_days or config.cache.max_bytes):
        from rayrank.score_cache import prune

        pruned = asdict(prune(config.cache.dir, max_age_days=config.cache.max_age_days,
                              max_bytes=config.cache.max_bytes, storage_options=cache["options"]))

    run_errors = inputs.run[1].num_rows if inputs.run is not None else 0
    counts = _counts(scored.done, ranked, split.done if split else {}, run_errors)
    this_run = scored.this_run
    scored_now = sum(int(d[counted]) for d in this_run)
    cluster = {"nodes_used": len({d["node"] for d in this_run}), "nodes_lost": sorted(nodes_at_start - alive_nodes()),
               "shards_retried": sum(bool(d["retried"]) for d in this_run)}
    manifest = {
        "model": model_record(resolved), "scorer": config.engine.scorer, "backend": config.engine.backend,
        "dtype": config.engine.dtype, "quantize": config.engine.quantize, "backend_choice": backend_choice,
        "input": reported.input, "output": config.output, "input_files": len(log.files), "shards": len(scored.done),
        "counts": {**counts, "rows_reused": scored.reused}, "cluster": cluster, "phases": summarize(this_run),
        "storage": _storage(this_run, rank_requests, driver_requests() - requests_before, counts["rows_in"],
                            job.out.fs),
        "files": sorted(p.rsplit("/", 1)[-1] for p in job.out.fs.ls(job.out.root, detail=False)
                        if p.rsplit("/", 1)[-1].startswith("part-")),
    }
    if inputs.corpus is not None:
        manifest["corpus"] = {"path": config.corpus.path, "files": len(inputs.corpus.files),
                              "buckets": job.state["doc_buckets"]}
    if cache is not None:
        manifest["cache"] = {"dir": config.cache.dir, "fingerprint": cache["fingerprint"],
                             "corrupt_segments": sorted({p for d in scored.done.values()
                                                         for p in json.loads(d.get("cache_corrupt", "[]"))}),
                             "seconds": round(sum(float(d.get("cache_s", 0)) for d in this_run), 3),
                             "prune": pruned}
    return finish(job, reported, manifest, scoring_s=round(scored.seconds, 3),
                  pairs_per_s=round(scored_now / scored.seconds, 2) if scored_now else None,
                  steady_pairs_per_s=steady_rate(this_run, counted))


PARTITION = re.compile(r"^[^=/\s]+=[^/\s]+$")


def run_partitions(config: RerankJobConfig) -> list[dict[str, Any]]:
    """Run the partitions `config.partitions` selects, each as its own job, and publish each alone.

    A partition KEY=VALUE of INPUT runs as a job into `OUTPUT/_partitions/KEY=VALUE/` (resumable as any
    job), is then published to `OUTPUT/KEY=VALUE/` (replacing what was there) and recorded in the ledger
    `OUTPUT/_ledger/<fingerprint>/KEY=VALUE.json`, whose fingerprint names the model setting and the
    result-shaping keys. `new` runs the partitions the ledger lacks; a killed run leaves its partition out
    of the ledger, so the same command resumes it and publishes it once. Returns the partitions' manifests.
    """
    in_options, out_options = storage_options(config.storage, config.input), storage_options(config.storage,
                                                                                             config.output)
    fs_in, root = filesystem(config.input, in_options)
    try:
        found = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs_in.ls(root, detail=False)
                       if PARTITION.match(p.rstrip("/").rsplit("/", 1)[-1]) and fs_in.isdir(p))
    except FileNotFoundError:
        found = []
    if not found:
        raise InputNotFoundError(f"INPUT {config.input} holds no KEY=VALUE/ partition folders (e.g. dt=2026-12-06/); "
                                 "--partitions reads a Hive-partitioned dataset: drop it for a plain INPUT")
    fs, out_root = filesystem(config.output, out_options)
    ledger = join(out_root, "_ledger", partition_fingerprint(config))
    published = {p.rsplit("/", 1)[-1][:-5] for p in (fs.ls(ledger, detail=False) if fs.exists(ledger) else [])
                 if p.endswith(".json") and not p.rsplit("/", 1)[-1].startswith(".")}
    if config.partitions == "new":
        chosen = [p for p in found if p not in published]
    elif config.partitions not in found:
        raise InputNotFoundError(f"INPUT {config.input} has no partition {config.partitions}; it has "
                                 f"{', '.join(found)}")
    elif config.partitions in published and not config.overwrite_partition:
        raise OutputConflictError(f"{join(config.output, config.partitions)} is published for this model setting "
                                  "already; pass --overwrite-partition to score it again and replace it")
    else:
        chosen = [config.partitions]
    for name in published:  # a run killed after a ledger entry leaves its partition's work folder
        if fs.exists(join(out_root, "_partitions", name)) and name not in chosen:
            fs.rm(join(out_root, "_partitions", name), recursive=True)
    print(f"[rerank] partitions: {len(chosen)} to run ({', '.join(chosen) or 'none'}), "
          f"{len(published & set(found))} published already", file=sys.stderr)
    manifests = []
    for name in chosen:
        work = join(config.output, "_partitions", name)
        manifest = run(config.model_copy(update={"input": join(config.input, name), "output": work,
                                                 "partitions": None, "overwrite_partition": False,
                                                 "overwrite": config.overwrite_partition}))
        publish_partition(fs, join(out_root, "_partitions", name), join(out_root, name))
        entry = {"partition": name, "job_id": manifest["job_id"], "counts": manifest["counts"],
                 "published": datetime.now(timezone.utc).isoformat()}
        retrying(f"writing the ledger entry of {name}",  # the partition's commit point
                 lambda entry=entry, name=name: write_json_atomic(entry, fs, join(ledger, f"{name}.json")))
        fs.rm(join(out_root, "_partitions", name), recursive=True)
        manifests.append({**manifest, "output": join(config.output, name)})
    return manifests


def partition_fingerprint(config: RerankJobConfig) -> str:
    """What a published partition was made with: the model's weights (by content) and settings, and the keys
    that shape the output."""
    from rayrank.score_cache import engine_fingerprint, weights_digest

    extra = {"top_n": config.top_n, "keep_text": config.keep_text, "index": config.index,
             "corpus": config.corpus.model_dump() if config.corpus else None}
    return engine_fingerprint(config.engine, weights_digest(resolve_model(config.engine.model_name).path),
                              device="cuda" if config.cluster.gpus_per_actor else "cpu", extra=extra)


def publish_partition(fs, work: str, target: str) -> None:
    """Put a finished partition job's files at `target`, replacing what is there.

    On disk: copied to a hidden sibling, then swapped in by two renames, so a reader sees the old
    partition, the new one, or (between the renames) none, never a mix; hidden siblings a killed publish
    left are removed first. On an object store (no rename), the switch is the manifest, one PUT: the new
    files are copied beside the old ones under names carrying this publish's tag (`part-00000-TAG.parquet`),
    then `_manifest.json` is written naming them (`files`), then every other object under `target` goes.
    A reader that follows the manifest (`rayrank.evaluate.read_output_table`: `export`, `eval`) reads the
    old partition or the new one, never a mix; a publish killed at any point leaves the old manifest (and
    its files) or the new one, and the next publish removes what it left.
    """
    files = sorted((f for f in fs.find(work) if "/_staging/" not in f), key=lambda f: f.endswith("_manifest.json"))
    if is_object_store(fs):
        *data, manifest = files
        tag, names = uuid.uuid4().hex[:8], []
        for path in data:
            stem, dot, suffix = path[len(work) + 1:].rpartition(".")
            names.append(f"{stem}-{tag}.{suffix}" if dot else f"{suffix}-{tag}")
            retrying(f"publishing {path}", lambda path=path, name=names[-1]: fs.copy(path, join(target, name)))
        record = {**retrying(f"reading {manifest}", lambda: read_json(fs, manifest)), "files": names}
        retrying(f"publishing {manifest}",  # the switch
                 lambda: write_json_atomic(record, fs, join(target, "_manifest.json")))
        fs.invalidate_cache(target)
        keep = {join(target, name) for name in [*names, "_manifest.json"]}
        for stale in [f for f in fs.find(target) if f not in keep]:
            retrying(f"removing {stale}", lambda stale=stale: fs.rm(stale))
        return
    parent, name = target.rsplit("/", 1)
    for stale in fs.glob(join(parent, f".{name}.tmp-*")) + fs.glob(join(parent, f".{name}.old-*")):
        fs.rm(stale, recursive=True)
    fresh, old = (join(parent, f".{name}.{kind}-{uuid.uuid4().hex[:8]}") for kind in ("tmp", "old"))
    for path in files:
        fs.makedirs((fresh + path[len(work):]).rsplit("/", 1)[0], exist_ok=True)
        fs.copy(path, fresh + path[len(work):])
    if fs.exists(target):
        fs.mv(target, old, recursive=True)
    fs.mv(fresh, target, recursive=True)
    if fs.exists(old):
        fs.rm(old, recursive=True)


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


def _counts(shards: dict[str, dict], buckets: dict[str, dict], split: dict[str, dict], run_errors: int
            ) -> dict[str, int]:
    """Rows of INPUT in and where they went; with a corpus, INPUT's rows are read and validated by the split
    units (`split`), and the join units reject those whose document is missing; a TREC run's rows whose query
    is missing are `run_errors`."""
    log_split = [s for s in split.values() if s["side"] == "log"]
    corpus_split = [s for s in split.values() if s["side"] == "corpus"]
    rows_in = sum(int(s["rows_in"]) for s in [*shards.values(), *log_split]) + run_errors
    invalid = sum(int(s["invalid"]) for s in [*shards.values(), *log_split]) + run_errors
    duplicates = sum(int(b["duplicates"]) for b in buckets.values())
    counts = {"rows_in": rows_in, "rows_scored": sum(int(b["rows_ranked"]) for b in buckets.values()),
              "rows_rejected": invalid + duplicates, "rows_invalid": invalid, "rows_duplicate": duplicates,
              "rows_written": sum(int(b["rows_written"]) for b in buckets.values()),
              "queries": sum(int(b["queries"]) for b in buckets.values()),
              "truncated": sum(int(s["truncated"]) for s in shards.values()),
              # Candidates scored with --index whose document was not in it (encoded on the fly).
              "index_missing": sum(int(s.get("index_missing", 0)) for s in shards.values()),
              # Pairs the model scored; the others came from the cache or repeat a pair scored in the same shard.
              "pairs_scored": sum(int(s.get("pairs_scored", s["valid"])) for s in shards.values()),
              "cache_hits": sum(int(s.get("cache_hits", 0)) for s in shards.values()),
              "cache_repeats": sum(int(s.get("cache_repeats", 0)) for s in shards.values())}
    if split:
        counts.update(corpus_rows_in=sum(int(s["rows_in"]) for s in corpus_split),
                      corpus_rows_rejected=sum(int(s["invalid"]) for s in corpus_split)
                      + sum(int(s.get("corpus_duplicates", 0)) for s in shards.values()))
    return counts


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
        *_join_and_cache_lines(manifest),
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


def _join_and_cache_lines(manifest: dict[str, Any]) -> list[str]:
    c, lines = manifest["counts"], []
    if corpus := manifest.get("corpus"):
        lines.append(f"  corpus         {c['corpus_rows_in']:,} rows from {corpus['path']} in {corpus['buckets']:,} "
                     f"bucket(s); {c['corpus_rows_rejected']:,} rejected (invalid or duplicate doc_id)")
    if cache := manifest.get("cache"):
        line = (f"  cache          {c['cache_hits']:,} pairs from the cache, {c['cache_repeats']:,} repeats within a "
                f"shard, {c['pairs_scored']:,} scored and written back ({cache['dir']})")
        if cache["corrupt_segments"]:
            line += f"; {len(cache['corrupt_segments'])} corrupt segment(s) skipped"
        lines.append(line)
    return lines


@command("rerank")
def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    for manifest in run_partitions(config) if config.partitions else [run(config)]:
        print(summary(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
