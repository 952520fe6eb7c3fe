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

Usage: `rayrank index DOCS INDEX_DIR [options]` or `python -m rayrank.jobs.index DOCS INDEX_DIR [options]`;
`rayrank index add|delete|compact INDEX_DIR ...` update a finished index (jobs/index_update.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any

import rayrank
from rayrank.cli import command
from rayrank.config import IndexJobConfig, load_yaml, merge_flags, parse_config
from rayrank.extras import engine_needs, need
from rayrank.index import build
from rayrank.index.format import CODEC, FORMAT_VERSION, write_bytes_atomic
from rayrank.io.storage import filesystem, join
from rayrank.io.tables import DOC_KEYS, Shard
from rayrank.jobs._docs import ShardIndexer, deduplicate, manifest_entry, staged_rows, valid_docs
from rayrank.jobs._flags import CLUSTER_FLAGS, ENGINE_FLAGS, add_cluster_flags, add_engine_flags, flag_values
from rayrank.jobs._output import JobOutput, steady_rate
from rayrank.jobs._phases import phase_line, summarize
from rayrank.jobs._shards import Claim, ParquetInput, actor_config, claim, finish, model_record, run_units
from rayrank.models import DEFAULT_LATE_INTERACTION, resolve_model
from rayrank.reranker import resolve_engine


UPDATES = ("add", "delete", "compact")


def parse_args(argv: list[str] | None) -> IndexJobConfig:
    parser = argparse.ArgumentParser(
        prog="rayrank index", description=__doc__.split("\n\n")[0],
        epilog="Updates: `rayrank index add INDEX_DIR NEW_DOCS`, `rayrank index delete INDEX_DIR IDS`, "
               "`rayrank index compact INDEX_DIR [--retrain]` (each has --help). A corpus at a path named "
               "add, delete or compact is written ./add.")
    parser.add_argument("input", nargs="?", help="DOCS: Parquet file, directory or glob (local or s3://)")
    parser.add_argument("output", nargs="?", help="INDEX_DIR: index directory (local or s3://)")
    parser.add_argument("--config", help="YAML job config (see configs/); flags override it")
    add_engine_flags(parser, scorer=False, model_help="a Hugging Face id or a local directory: a late-interaction "
                     f"encoder (default {DEFAULT_LATE_INTERACTION})")
    add_cluster_flags(parser)
    default = {key: field.default for key, field in IndexJobConfig.model_fields.items()}
    parser.add_argument("--compression", choices=["none", "residual"], help="residual: centroid ids + --nbits bits "
                        f"per dimension instead of float16 (default {default['compression']})")
    parser.add_argument("--nbits", type=int, choices=[1, 2, 4, 8],
                        help=f"residual bits per dimension (default {default['nbits']})")
    parser.add_argument("--pool-factor", type=int,
                        help=f"keep about 1/K of each document's tokens (default {default['pool_factor']}: all)")
    parser.add_argument("--centroids", type=int,
                        help="k-means centroids (default: a power of two up to 4*sqrt(corpus tokens))")
    parser.add_argument("--overwrite", action="store_true", help="replace an INDEX_DIR holding another build")
    args = parser.parse_args(argv)

    data = load_yaml(args.config) if args.config else {}
    flags = {"input": args.input, "output": args.output, "compression": args.compression, "nbits": args.nbits,
             "pool_factor": args.pool_factor, "centroids": args.centroids,
             "overwrite": True if args.overwrite else None}
    sections = {"engine": flag_values(args, ENGINE_FLAGS), "cluster": flag_values(args, CLUSTER_FLAGS)}
    data = merge_flags(data, flags, sections, args.config)
    config = parse_config(IndexJobConfig, data, args.config or "command-line flags")
    if not config.input or not config.output:
        parser.error("DOCS and INDEX_DIR are required (as arguments or `input:`/`output:` in --config)")
    return config


def train_codec(config: dict, in_options: dict, out_options: dict, layouts: dict[str, str],
                shards: list[str], corpus_rows: int) -> dict[str, Any]:
    """Phase 1 (a Ray task): encode a sample of documents, train the codec (centroids for `corpus_rows`
    documents), publish `codec.npz`."""
    from rayrank.jobs._ray import quiet_worker

    quiet_worker()
    config_ = IndexJobConfig.model_validate(config)
    reranker = rayrank.Reranker.from_config(config_.engine)
    fs_in, _ = filesystem(config_.input, in_options)
    fs_out, root = filesystem(config_.output, out_options)
    texts: list[str] = []
    for raw in shards:  # the first documents in input order: deterministic, so a rerun trains the same codec
        shard = Shard(**json.loads(raw))
        kept, _, _ = valid_docs(fs_in, shard, layouts[shard.path], config_.columns)
        texts += kept["text"].to_pylist()[:config_.sample_docs - len(texts)]
        if len(texts) >= config_.sample_docs:
            break
    started = time.perf_counter()
    embeddings = build.encode(reranker.scorer, texts, config_.pool_factor)
    codec, stats = build.train_codec(embeddings, config_.nbits, config_.centroids, corpus_rows)
    checksum = write_bytes_atomic(fs_out, join(root, CODEC), codec.to_bytes())
    scorer = reranker.scorer
    stats.update(sha256=checksum, seconds=round(time.perf_counter() - started, 3), dim=scorer.dim,
                 query_max_length=scorer.query_max_length, document_max_length=scorer.document_max_length,
                 conventions=asdict(scorer.conventions))
    JobOutput(fs_out, root).commit_unit("codec", "codec", stats)
    return stats


def run(config: IndexJobConfig) -> dict[str, Any]:
    """Run (or resume) the build and return its manifest."""
    source = ParquetInput.open(config, DOC_KEYS)
    resolved = resolve_model(config.engine.model_name)
    need(*engine_needs(config.engine))  # here, not in every actor that loads the model
    identity = {"kind": "index", "inputs": source.sizes, "engine": config.engine.model_dump(),
                "columns": config.columns.model_dump(),
                **config.model_dump(include={"compression", "nbits", "pool_factor", "centroids", "sample_docs",
                                             "shard_rows"})}
    job = claim("index", config.output, source.out_options, identity,
                {"shard_rows": source.shard_rows(config.shard_rows, config.cluster.actors[1])}, config.overwrite)
    if job.finished is not None:
        return job.finished
    # backend: auto is measured (or read from its cache) once, here, so every actor runs the same setting;
    # the job's identity keeps "auto", so a resume on this machine finds its work.
    engine, backend_choice = resolve_engine(config.engine, resolved)
    config = config.model_copy(update={"engine": engine})
    shards = source.shards(job.state["shard_rows"])

    from rayrank.jobs._ray import connect

    connect(config.cluster.address)
    codec = _codec(job, config, source, list(shards.values()))
    kwargs = {"config": actor_config(config), "in_options": source.in_options, "out_options": source.out_options,
              "layouts": source.layouts}
    encoded = run_units(job, "index", shards, ShardIndexer, config.cluster, kwargs)
    entries = [manifest_entry(s) for s in deduplicate(job.out, encoded.done, lambda files: files["docs"]["path"],
                                                     staged_rows(job.out))]
    docs, tokens = sum(e["docs"] for e in entries), sum(e["tokens"] for e in entries)
    vector_bytes = sum(int(s["vector_bytes"]) for s in encoded.done.values())
    invalid = sum(int(s["invalid"]) for s in encoded.done.values())
    duplicates = sum(e["duplicates"] for e in entries)
    encoded_now = sum(int(s["docs"]) for s in encoded.this_run)
    codec_bytes = job.out.fs.size(job.out.path(CODEC))
    error = sum(float(s.get("residual_error_sum", 0.0)) for s in encoded.done.values())
    encoded_tokens = sum(int(s["tokens"]) for s in encoded.done.values())
    manifest = {
        "format_version": FORMAT_VERSION, "model": model_record(resolved), "backend": config.engine.backend,
        "engine_dtype": config.engine.dtype, "backend_choice": backend_choice,
        "dim": codec["dim"], "dtype": "float16", "normalized": True, "query_max_length": codec["query_max_length"],
        "document_max_length": codec["document_max_length"], "conventions": codec["conventions"],
        "compression": {"kind": config.compression, "nbits": config.nbits if config.compression == "residual" else None,
                        "pool_factor": config.pool_factor, "centroids": codec["centroids"],
                        "codec": {"path": CODEC, "sha256": codec["sha256"], "bytes": codec_bytes},
                        "sample_docs": codec["sample_docs"], "kmeans_tokens": codec["kmeans_tokens"],
                        # mean 1 - cos(token, its centroid): what an add's drift is measured against
                        "residual_error": round(error / encoded_tokens, 6) if encoded_tokens else None},
        "input": config.input, "output": config.output, "input_files": len(source.files),
        "docs": docs, "total_tokens": tokens, "tokens_per_doc": round(tokens / docs, 2) if docs else None,
        # Token vectors (float16 or codes + residual bits) incl. unreferenced rows of dropped duplicates.
        "bytes_per_doc": round(vector_bytes / docs, 1) if docs else None,
        "counts": {"rows_in": sum(int(s["rows_in"]) for s in encoded.done.values()), "docs_indexed": docs,
                   "rows_rejected": invalid + duplicates, "rows_invalid": invalid, "rows_duplicate": duplicates,
                   "rows_reused": encoded.reused},
        "phases": summarize(encoded.this_run), "shards": entries,
    }
    return finish(job, config, manifest, encoding_s=round(encoded.seconds, 3),
                  docs_per_s=round(encoded_now / encoded.seconds, 2) if encoded_now else None,
                  steady_docs_per_s=steady_rate(encoded.this_run, "docs"))


def _codec(job: Claim, config: IndexJobConfig, source: ParquetInput, shards: list[str]) -> dict[str, Any]:
    """Phase 1's marker: trained now (one Ray task) unless an earlier run committed it."""
    import ray

    stats = job.out.committed("codec").get("codec")
    if stats is None:
        print(f"[index] training the codec on up to {config.sample_docs:,} documents", file=sys.stderr)
        task = ray.remote(num_cpus=config.cluster.cpus_per_actor, num_gpus=config.cluster.gpus_per_actor)(train_codec)
        stats = ray.get(task.remote(config.model_dump(), source.in_options, source.out_options, source.layouts, shards,
                                    source.rows))
    return stats


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
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in UPDATES:  # a corpus at a path named `add` is written `./add`
        from rayrank.jobs.index_update import main as update_main

        return update_main(argv)
    print(summary(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
