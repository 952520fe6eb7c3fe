"""Late-interaction index build on Ray Data: a corpus (Parquet `doc_id`, `text`) into INDEX_DIR.

Phases, each resumable (see rayrank/index/format.py for the layout):
1. Codec: one task encodes the first `sample_docs` valid documents and trains k-means centroids
   (the IVF stage, and residual compression) and the residual buckets; `codec.npz` is committed.
2. Encode: input shards go to an autoscaling pool of actors that each hold one encoder; an actor
   validates rows (bad ones and in-shard duplicates to the errors table), encodes documents,
   optionally pools and compresses them, writes the shard's files, then a marker commits the shard.
   Like the rerank job's actors, each works on several shards at once (jobs/_phases.py).
3. Deduplicate: a doc_id seen in an earlier shard is dropped from later shards' doc tables (its
   token rows stay unreferenced) and listed in `_errors/`, so every doc_id is indexed exactly once.
The manifest, written last, marks the index finished. A rerun of a killed build skips committed work.

Usage: `rayrank index DOCS INDEX_DIR [options]` or `python -m rayrank.jobs.index DOCS INDEX_DIR [options]`.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import math
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import rayrank
from rayrank.cli import command
from rayrank.config import IndexJobConfig, load_yaml, merge_flags, parse_config
from rayrank.index import build
from rayrank.index.compress import ResidualCodec
from rayrank.index.format import CODEC, FORMAT_VERSION, parquet_bytes, sha256, shard_files, write_bytes_atomic
from rayrank.io.storage import filesystem, join, list_parquet, retrying, storage_options, write_parquet_atomic
from rayrank.io.tables import (DOC_KEYS, Shard, error_rows, plan_shards, read_footers, read_shard, split_duplicates,
                               split_valid)
from rayrank.jobs._output import JobOutput, job_identity, steady_rate
from rayrank.jobs._phases import ModelGate, Phases, phase_line, split_cpus, summarize
from rayrank.jobs._shards import map_units
from rayrank.models import resolve_model
from rayrank.reranker import resolve_engine


def parse_args(argv: list[str] | None) -> IndexJobConfig:
    parser = argparse.ArgumentParser(prog="rayrank index", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", nargs="?", help="DOCS: Parquet file, directory or glob (local or s3://)")
    parser.add_argument("output", nargs="?", help="INDEX_DIR: index directory (local or s3://)")
    parser.add_argument("--config", help="YAML job config (see configs/); flags override it")
    parser.add_argument("--model", help="Hugging Face id or local directory (a late-interaction encoder)")
    parser.add_argument("--backend", choices=["auto", "torch", "onnx", "openvino"])
    parser.add_argument("--actors", help="MIN,MAX actors (autoscaling pool), e.g. 1,4")
    parser.add_argument("--gpus-per-actor", type=float)
    parser.add_argument("--address", help="Ray address: 'auto' joins a running cluster; default starts a local Ray")
    parser.add_argument("--compression", choices=["none", "residual"])
    parser.add_argument("--nbits", type=int, choices=[1, 2, 4, 8], help="residual bits per dimension")
    parser.add_argument("--pool-factor", type=int, help="keep about 1/K of each document's tokens")
    parser.add_argument("--centroids", type=int, help="k-means centroids (default about 4*sqrt(sample tokens))")
    parser.add_argument("--overwrite", action="store_true", help="replace an INDEX_DIR holding another build")
    args = parser.parse_args(argv)

    data = load_yaml(args.config) if args.config else {}
    flags = {"input": args.input, "output": args.output, "compression": args.compression, "nbits": args.nbits,
             "pool_factor": args.pool_factor, "centroids": args.centroids,
             "overwrite": True if args.overwrite else None}
    engine = {"model": args.model, "backend": args.backend}
    cluster = {"address": args.address, "actors": args.actors, "gpus_per_actor": args.gpus_per_actor}
    data = merge_flags(data, flags, {"engine": engine, "cluster": cluster}, args.config)
    config = parse_config(IndexJobConfig, data, args.config or "command-line flags")
    if not config.input or not config.output:
        parser.error("DOCS and INDEX_DIR are required (as arguments or `input:`/`output:` in --config)")
    return config


def _valid_docs(fs_in, shard: Shard, layout: str, config: IndexJobConfig, phases: Phases | None = None
                ) -> tuple[pa.Table, pa.Table, int]:
    """(valid first-occurrence rows, errors, rows read) of one shard."""
    phases = phases or Phases()
    with phases.timed("read_s"):
        table, layout_errors = retrying(f"reading shard {shard.shard_id} of {shard.path}",
                                        lambda: read_shard(fs_in, shard, layout, config.columns, DOC_KEYS))
    with phases.timed("validate_s"):
        valid, invalid = split_valid(table, DOC_KEYS)
        kept, duplicates = split_duplicates(valid, ("doc_id",))
    return kept, pa.concat_tables([layout_errors, invalid, duplicates]), table.num_rows + layout_errors.num_rows


def train_codec(config: dict, in_options: dict, out_options: dict, layouts: dict[str, str],
                shards: list[str]) -> dict[str, Any]:
    """Phase 1 (a Ray task): encode a sample of documents, train the codec, publish `codec.npz`."""
    from rayrank.jobs._ray import quiet_worker

    quiet_worker()
    config_ = IndexJobConfig.model_validate(config)
    reranker = rayrank.Reranker.from_config(config_.engine)
    fs_in, _ = filesystem(config_.input, in_options)
    fs_out, root = filesystem(config_.output, out_options)
    texts: list[str] = []
    for raw in shards:  # the first documents in input order: deterministic, so a rerun trains the same codec
        kept, _, _ = _valid_docs(fs_in, Shard(**json.loads(raw)), layouts[json.loads(raw)["path"]], config_)
        texts += kept["text"].to_pylist()[:config_.sample_docs - len(texts)]
        if len(texts) >= config_.sample_docs:
            break
    started = time.perf_counter()
    embeddings = build.encode(reranker.scorer, texts, config_.pool_factor)
    codec, stats = build.train_codec(embeddings, config_.nbits, config_.centroids)
    checksum = write_bytes_atomic(fs_out, join(root, CODEC), codec.to_bytes())
    scorer = reranker.scorer
    stats.update(sha256=checksum, seconds=round(time.perf_counter() - started, 3), dim=scorer.dim,
                 query_max_length=scorer.query_max_length, document_max_length=scorer.document_max_length,
                 conventions=asdict(scorer.conventions))
    JobOutput(fs_out, root).commit_unit("codec", "codec", stats)
    return stats


class ShardIndexer:
    """Ray Data actor: loads the encoder and the codec once, then encodes and writes whole shards."""

    def __init__(self, config: dict, in_options: dict, out_options: dict, layouts: dict[str, str]) -> None:
        from rayrank.jobs._ray import actor_id, quiet_worker

        quiet_worker()
        self.config = IndexJobConfig.model_validate(config)
        cluster = self.config.cluster
        split_cpus(cluster.cpus_per_actor, self.config.engine.threads, cluster.prefetch_shards)
        self.reranker = rayrank.Reranker.from_config(self.config.engine)
        self.gate = ModelGate(self.reranker.scorer)
        self.actor = actor_id()
        self.fs_in, _ = filesystem(self.config.input, in_options)
        fs_out, root = filesystem(self.config.output, out_options)
        self.out = JobOutput(fs_out, root)
        self.codec = ResidualCodec.from_bytes(fs_out.cat_file(join(root, CODEC)))
        self.layouts = layouts
        gc.freeze()  # what is loaded lives as long as the actor (see ShardScorer in rayrank.jobs.rerank)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        stats = [self._index_shard(Shard(**json.loads(s))) for s in batch["shard"]]
        return {key: [s[key] for s in stats] for key in stats[0]}

    def _index_shard(self, shard: Shard) -> dict[str, Any]:
        phases = Phases()
        with self.gate.shard(phases):
            return self._run_shard(shard, phases)

    def _run_shard(self, shard: Shard, phases: Phases) -> dict[str, Any]:
        started, started_at = time.perf_counter(), time.time()
        config, out, sid = self.config, self.out, shard.shard_id
        kept, errors, rows_in = _valid_docs(self.fs_in, shard, self.layouts[shard.path], config, phases)
        with self.gate.engine(phases):  # tokenizing, the encoder and pooling
            embeddings = build.encode(self.reranker.scorer, kept["text"].to_pylist(), config.pool_factor)
        with phases.timed("write_s"):  # compression and the shard's files
            data, packed = build.pack_shard(sid, kept["doc_id"].to_pylist(), embeddings, self.codec,
                                            config.compression)
            files = {role: {"path": path, "bytes": len(data[path]),
                            "sha256": retrying(f"writing {path}",
                                               lambda path=path: write_bytes_atomic(out.fs, out.path(path), data[path]))}
                     for role, path in shard_files(sid, config.compression).items()}
            # Where each document came from, for the cross-shard duplicate report.
            rows = pa.table({"doc_id": kept["doc_id"], "_row": kept["_row"]})
            retrying(f"staging the rows of shard {sid}",
                     lambda: write_parquet_atomic(rows, out.fs, out.stage("rows", f"{sid}.parquet")))
            if errors.num_rows:
                retrying(f"staging the errors of shard {sid}",
                         lambda: write_parquet_atomic(errors, out.fs, out.stage("errors", f"{sid}.parquet")))
        stats = {"shard": sid, "ordinal": shard.ordinal, "source": shard.path, "rows_in": rows_in,
                 "docs": packed["docs"], "tokens": packed["tokens"], "vector_bytes": packed["vector_bytes"],
                 "invalid": errors.num_rows, "files": json.dumps(files), "actor": self.actor, **phases.as_stats(),
                 "seconds": time.perf_counter() - started, "started_at": started_at, "finished_at": time.time()}
        retrying(f"committing shard {sid}", lambda: out.commit_unit("shards", sid, stats))
        return stats


def deduplicate(out: JobOutput, done: dict[str, dict]) -> list[dict[str, Any]]:
    """Phase 3 (driver): keep each doc_id in its first shard (plan order); returns the manifest's shard list.

    Idempotent: a rerun after a kill finds the same duplicates, or none where they were already dropped.
    """
    seen: set[str] = set()
    entries = []
    for sid, stats in sorted(done.items(), key=lambda kv: int(kv[1]["ordinal"])):
        files = json.loads(stats["files"])
        docs_path = out.path(files["docs"]["path"])
        with out.fs.open(docs_path, "rb") as handle:
            data = handle.read()
        docs = pq.read_table(io.BytesIO(data))
        ids = docs["doc_id"].to_pylist()
        dup = np.array([d in seen for d in ids], dtype=bool)
        if dup.any():
            with out.fs.open(out.stage("rows", f"{sid}.parquet"), "rb") as handle:
                rows = dict(zip(*(c.to_pylist() for c in pq.read_table(handle).columns)))
            dups = docs.filter(pa.array(dup))
            errors = error_rows(dups.select(["doc_id"]), ["duplicate doc_id: indexed from an earlier shard"] * len(dups),
                                [stats["source"]] * len(dups), [rows.get(d) for d in dups["doc_id"].to_pylist()])
            write_parquet_atomic(errors, out.fs, out.path("_errors", f"duplicates-{sid}.parquet"))
            docs = docs.filter(pa.array(~dup))
            data = parquet_bytes(docs)
            write_bytes_atomic(out.fs, docs_path, data)
        seen.update(docs["doc_id"].to_pylist())
        files["docs"].update(sha256=sha256(data), bytes=len(data))
        tokens = int(np.asarray(docs["tokens"].to_numpy(), dtype=np.int64).sum())
        entries.append({"id": sid, "docs": docs.num_rows, "tokens": tokens, "duplicates": int(dup.sum()),
                        "files": files})
    return entries


def _progress(done: int, total: int, docs: int, started: float) -> None:
    rate = docs / max(time.perf_counter() - started, 1e-9)
    print(f"\r[index] shards {done}/{total}  docs {docs:,}  {rate:,.1f} docs/s", end="", file=sys.stderr, flush=True)


def run(config: IndexJobConfig) -> dict[str, Any]:
    """Run (or resume) the build and return its manifest."""
    started_at, started = datetime.now(timezone.utc), time.perf_counter()
    in_options = storage_options(config.storage, config.input)
    out_options = storage_options(config.storage, config.output)
    fs_in, in_root = filesystem(config.input, in_options)
    fs_out, out_root = filesystem(config.output, out_options)
    files = list_parquet(fs_in, in_root)
    groups, layouts = read_footers(fs_in, files, config.columns, DOC_KEYS)
    total_rows = sum(sum(counts) for counts in groups.values())
    resolved = resolve_model(config.engine.model_name)

    identity = {"kind": "index", "inputs": [(f, fs_in.size(f)) for f in files],
                "engine": config.engine.model_dump(), "columns": config.columns.model_dump(),
                **config.model_dump(include={"compression", "nbits", "pool_factor", "centroids", "sample_docs",
                                             "shard_rows"})}
    job_id = job_identity(identity)
    out = JobOutput(fs_out, out_root)
    target = min(config.shard_rows, max(1, math.ceil(total_rows / (4 * config.cluster.actors[1]))))
    state = out.prepare(job_id, {"shard_rows": target, "started": started_at.isoformat()}, config.overwrite)
    if (manifest := out.manifest()) is not None:
        out.cleanup()
        print(f"[index] {config.output} already holds this finished index; nothing to do.", file=sys.stderr)
        return manifest
    # backend: auto is measured (or read from its cache) once, here, so every actor runs the same setting;
    # the job's identity keeps "auto", so a resume on this machine finds its work.
    engine, backend_choice = resolve_engine(config.engine, resolved)
    config = config.model_copy(update={"engine": engine})

    shards = plan_shards(fs_in, groups, state["shard_rows"])
    planned = {s.shard_id for s in shards}
    done = {k: v for k, v in out.committed("shards").items() if k in planned}
    todo = [s for s in shards if s.shard_id not in done]
    reused = sum(int(d["rows_in"]) for d in done.values())
    if done:
        print(f"[index] resuming: {len(done)} of {len(shards)} shards already indexed; reusing {reused:,} docs",
              file=sys.stderr)

    import ray

    from rayrank.jobs._ray import connect

    connect(config.cluster.address)
    resources = {"num_cpus": config.cluster.cpus_per_actor, "num_gpus": config.cluster.gpus_per_actor}
    codec_stats = out.committed("codec").get("codec")
    if codec_stats is None:
        print(f"[index] training the codec on up to {config.sample_docs:,} documents", file=sys.stderr)
        task = ray.remote(**resources)(train_codec)
        codec_stats = ray.get(task.remote(config.model_dump(), in_options, out_options, layouts,
                                          [json.dumps(asdict(s)) for s in shards]))

    encode_started = time.perf_counter()
    encoded_now = 0
    if todo:
        kwargs = {"config": config.model_dump(), "in_options": in_options, "out_options": out_options,
                  "layouts": layouts}
        for row in map_units([json.dumps(asdict(s)) for s in todo], ShardIndexer, config.cluster, kwargs):
            done[row["shard"]] = row
            encoded_now += int(row["docs"])
            _progress(len(done), len(shards), reused + encoded_now, encode_started)
        print(file=sys.stderr)
    encode_seconds = time.perf_counter() - encode_started

    entries = deduplicate(out, done)
    for sid in sorted(done):
        staged = out.stage("errors", f"{sid}.parquet")
        if fs_out.exists(staged):
            fs_out.makedirs(out.path("_errors"), exist_ok=True)
            fs_out.mv(staged, out.path("_errors", f"invalid-{sid}.parquet"))

    docs = sum(e["docs"] for e in entries)
    tokens = sum(e["tokens"] for e in entries)
    vector_bytes = sum(int(s["vector_bytes"]) for s in done.values())
    rows_in = sum(int(s["rows_in"]) for s in done.values())
    invalid = sum(int(s["invalid"]) for s in done.values())
    duplicates = sum(e["duplicates"] for e in entries)
    codec_bytes = fs_out.size(out.path(CODEC))
    manifest = {
        "format_version": FORMAT_VERSION, "job_id": job_id, "rayrank_version": rayrank.__version__,
        "model": {"name": resolved.name, "source": resolved.source, "path": str(resolved.path)},
        "backend": config.engine.backend, "engine_dtype": config.engine.dtype, "backend_choice": backend_choice,
        "dim": codec_stats["dim"], "dtype": "float16", "normalized": True,
        "query_max_length": codec_stats["query_max_length"],
        "document_max_length": codec_stats["document_max_length"],
        "conventions": codec_stats["conventions"],
        "compression": {"kind": config.compression, "nbits": config.nbits if config.compression == "residual" else None,
                        "pool_factor": config.pool_factor, "centroids": codec_stats["centroids"],
                        "codec": {"path": CODEC, "sha256": codec_stats["sha256"], "bytes": codec_bytes},
                        "sample_docs": codec_stats["sample_docs"], "kmeans_tokens": codec_stats["kmeans_tokens"]},
        "input": config.input, "output": config.output, "input_files": len(files),
        "docs": docs, "total_tokens": tokens,
        "tokens_per_doc": round(tokens / docs, 2) if docs else None,
        # Token vectors (float16 or codes + residual bits) incl. unreferenced rows of dropped duplicates.
        "bytes_per_doc": round(vector_bytes / docs, 1) if docs else None,
        "counts": {"rows_in": rows_in, "docs_indexed": docs, "rows_rejected": invalid + duplicates,
                   "rows_invalid": invalid, "rows_duplicate": duplicates, "rows_reused": reused},
        "timings": {"started": state["started"], "finished": datetime.now(timezone.utc).isoformat(),
                    "elapsed_s": round(time.perf_counter() - started, 3), "encoding_s": round(encode_seconds, 3),
                    "docs_per_s": round(encoded_now / encode_seconds, 2) if encoded_now else None,
                    "steady_docs_per_s": steady_rate([done[s.shard_id] for s in todo], "docs")},
        "phases": summarize([done[s.shard_id] for s in todo]),
        "config": config.model_dump(exclude={"storage"}),
        "shards": entries,
    }
    out.finish(manifest)
    return manifest


def summary(manifest: dict[str, Any]) -> str:
    c, t, comp = manifest["counts"], manifest["timings"], manifest["compression"]
    rate = (f"{t['docs_per_s']:,.1f} docs/s in the encoding phase, {t['steady_docs_per_s']:,.1f} once actors were up"
            if t["docs_per_s"] else "no new documents encoded")
    setting = comp["kind"] + (f", {comp['nbits']} bits" if comp["nbits"] else "") + \
        (f", pool factor {comp['pool_factor']}" if comp["pool_factor"] > 1 else "")
    phases = [phase_line(manifest["phases"])] if manifest.get("phases", {}).get("actors") else []
    return "\n".join([
        f"rayrank index: {manifest['output']}",
        f"  model          {manifest['model']['name']} (dim {manifest['dim']}, from {manifest['model']['source']})",
        f"  rows in        {c['rows_in']:,}  (reused from an earlier run: {c['rows_reused']:,})",
        (f"  docs indexed   {c['docs_indexed']:,}  in {len(manifest['shards'])} shard(s); "
         f"{manifest['total_tokens']:,} tokens"),
        (f"  rows rejected  {c['rows_rejected']:,}  ({c['rows_invalid']:,} invalid, {c['rows_duplicate']:,} duplicate;"
         f" see {join(manifest['output'], '_errors')})"),
        f"  compression    {setting}; {comp['centroids']} centroids; {manifest['bytes_per_doc']} bytes/doc",
        f"  elapsed        {t['elapsed_s']:.1f} s  ({rate})",
        *phases,
    ])


@command("index")
def main(argv: list[str] | None = None) -> int:
    print(summary(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
