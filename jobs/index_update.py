"""`rayrank index add|delete|compact`: update a finished index, one new generation each (rayrank.index.update).

`add INDEX_DIR NEW_DOCS` encodes only the new documents with the index's recorded model, pooling and
codec, on the build's Ray path (jobs/_docs.py's ShardIndexer, `jobs/_shards.py`'s resume), and commits
them as new shards; a doc_id already in the index replaces the old one. A killed add rerun with the
same command resumes its committed shards and publishes once. `delete INDEX_DIR IDS` tombstones the
doc_ids of IDS (a text file, one doc_id a line, or Parquet with a `doc_id` column). `compact INDEX_DIR`
rewrites shards without their tombstoned rows; `--retrain` also refits the centroids (say the
codec drift figure warns). `rayrank index` sends its arguments here when the first is add, delete
or compact: a corpus at a path of that name is written `./add`.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import pyarrow.parquet as pq

from rayrank.config import IndexJobConfig, load_yaml
from rayrank.errors import ConfigError, IndexFormatError, InputSchemaError
from rayrank.extras import engine_needs, need
from rayrank.index import IndexReader, update
from rayrank.index.format import CODEC, check_model, read_manifest
from rayrank.io.storage import filesystem, join, read_json, storage_options
from rayrank.io.tables import DOC_KEYS
from rayrank.jobs._docs import ShardIndexer, deduplicate, manifest_entry, staged_rows
from rayrank.jobs._output import JobOutput, job_identity
from rayrank.jobs._shards import ParquetInput, actor_config, claim, run_units
from rayrank.models import resolve_model

UPDATE_KEYS = {"cluster", "columns", "storage"}  # what --config may set: the rest is the index's


def _parser(word: str, usage: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"rayrank index {word}", description=usage)
    parser.add_argument("index", help="INDEX_DIR built by `rayrank index` (local or s3://)")
    parser.add_argument("--config", help=f"YAML with {', '.join(sorted(UPDATE_KEYS))} (the index's own settings "
                                         "apply to everything else)")
    return parser


def _settings(path: str | None) -> dict[str, Any]:
    data = load_yaml(path) if path else {}
    if extra := sorted(set(data) - UPDATE_KEYS):
        raise ConfigError(f"{path}: {', '.join(extra)} cannot be set for an update: the index's recorded model, "
                          f"codec and layout apply; keep only {', '.join(sorted(UPDATE_KEYS))}.")
    return data


def add_config(argv: list[str]) -> IndexJobConfig:
    parser = _parser("add", "encode NEW_DOCS with the index's model and codec and add them as new shards")
    parser.add_argument("input", help="NEW_DOCS: Parquet with doc_id, text (a doc_id already indexed is replaced)")
    parser.add_argument("--actors", help="MIN,MAX actors (autoscaling pool), e.g. 1,4")
    parser.add_argument("--gpus-per-actor", type=float)
    parser.add_argument("--address", help="Ray address: 'auto' joins a running cluster; default starts a local Ray")
    args = parser.parse_args(argv)
    data = _settings(args.config)
    fs, root = filesystem(args.index, storage_options(data.get("storage"), args.index))
    recorded = read_manifest(fs, root).get("config")
    if recorded is None:
        raise IndexFormatError(f"{args.index} records no build settings (it was not built by `rayrank index`); "
                               "add to it with rayrank.index.update.append, or rebuild it with `rayrank index`.")
    # the build's cluster (its Ray address, its actors) need not be this run's: flags and --config only
    cluster = {**data.get("cluster", {}),
               **{k: v for k, v in {"actors": args.actors, "gpus_per_actor": args.gpus_per_actor,
                                    "address": args.address}.items() if v is not None}}
    return IndexJobConfig.model_validate({**recorded, **data, "cluster": cluster, "input": args.input,
                                          "output": args.index, "overwrite": False})


def add(config: IndexJobConfig) -> dict[str, Any]:
    """Run (or resume) the add and return the index's new manifest (the unchanged one if it was done)."""

    started = time.perf_counter()
    source = ParquetInput.open(config, DOC_KEYS)
    resolved = resolve_model(config.engine.model_name)
    need(*engine_needs(config.engine))
    reader = IndexReader(config.output, source.out_options)
    check_model(reader.manifest, config.output, resolved.name)
    fs, root, base = reader.fs, reader.root, reader.manifest
    fingerprint = job_identity({"kind": "index-add", "index": base["job_id"], "inputs": source.sizes,
                                "columns": config.columns.model_dump()})
    last = (base.get("updates") or [{}])[-1]
    if last.get("fingerprint") == fingerprint:  # finished; a kill after publishing may have left its lease
        if (read_json(fs, join(root, update.LEASE)) or {}).get("job_id") == last["job_id"]:
            update.release(fs, root)
        print(f"[index add] {config.output} already holds these documents (generation {reader.generation}); "
              "nothing to do.", file=sys.stderr)
        return base
    identity = {"fingerprint": fingerprint, "generation": reader.generation}
    staging = join(config.output, update.UPDATE_DIR)
    update.take_lease(fs, root, job_identity(identity), "add", base,
                      {"shard_rows": source.shard_rows(config.shard_rows, config.cluster.actors[1])})
    job = claim("index add", staging, source.out_options, identity, {}, overwrite=False)
    shards = source.shards(job.state["shard_rows"])

    from rayrank.jobs._ray import connect

    connect(config.cluster.address)
    prefix = f"g{reader.generation + 1}-"
    kwargs = {"config": actor_config(config), "in_options": source.in_options, "out_options": source.out_options,
              "layouts": source.layouts, "staging": staging, "prefix": prefix,
              "codec": base["compression"].get("codec", {}).get("path", CODEC)}
    encoded = run_units(job, "index add", shards, ShardIndexer, config.cluster, kwargs)
    done = {prefix + sid: marker for sid, marker in encoded.done.items()}
    indexed = deduplicate(JobOutput(fs, root), done, lambda files: files["docs"]["path"], staged_rows(job.out))
    entries = [{**manifest_entry(s), "residual_error_sum": float(done[s.id]["residual_error_sum"])} for s in indexed]
    invalid = sum(int(m["invalid"]) for m in done.values())
    record = {"job_id": job.job_id, "fingerprint": fingerprint, "input": config.input,
              "rows_in": sum(int(m["rows_in"]) for m in done.values()),
              "rows_rejected": invalid + sum(s.duplicates for s in indexed), "rows_reused": encoded.reused,
              "encoding_s": round(encoded.seconds, 3), "elapsed_s": round(time.perf_counter() - started, 3)}
    manifest = update.commit_add(reader, entries, [d for s in indexed for d in s.docs["doc_id"].to_pylist()], record)
    errors = join(staging, "_errors")
    for path in fs.ls(errors, detail=False) if fs.exists(errors) else []:
        fs.mv(path, join(root, "_errors", prefix + path.rsplit("/", 1)[-1]))
    update.release(fs, root)
    return manifest


def read_ids(url: str, options: dict[str, Any]) -> list[str]:
    """doc_ids of IDS: a Parquet file's `doc_id` column, else one doc_id a line of a text file (blank lines skipped)."""
    fs, path = filesystem(url, options)
    if not fs.exists(path):
        raise FileNotFoundError(f"IDS {url} does not exist")
    if path.endswith(".parquet"):
        with fs.open(path, "rb") as handle:
            table = pq.read_table(handle)
        if "doc_id" not in table.column_names:
            raise InputSchemaError(f"{url} has no doc_id column (columns: {', '.join(table.column_names)}); "
                                   "name the column doc_id, or give a text file with one doc_id a line.")
        return [str(d) for d in table["doc_id"].to_pylist() if d is not None]
    with fs.open(path, "r") as handle:
        return [line.strip() for line in handle if line.strip()]


def drift_line(drift: dict[str, Any] | None) -> str:
    if not drift or drift.get("ratio") is None:
        return "codec drift   no documents added since the codec was trained"
    advice = (f" > {update.DRIFT_ADVICE}: the centroids no longer fit the added tokens; "
              "run `rayrank index compact INDEX_DIR --retrain`") if drift["retrain_advised"] else ""
    return (f"codec drift   added tokens' residual error {drift['added_residual_error']:.4f} vs "
            f"{drift['codec_residual_error']:.4f} at training (x{drift['ratio']:.2f}{advice})")


def main(argv: list[str]) -> int:
    """`argv` starts with the update's word (add, delete or compact)."""
    word, rest = argv[0], argv[1:]
    if word == "add":
        config = add_config(rest)
        m = add(config)
        last = m["updates"][-1] if m.get("updates") else {}
        print(f"rayrank index add: {config.output} generation {m.get('generation', 0)}\n"
              f"  added {last.get('docs_added', 0):,} docs ({last.get('replaced', 0):,} replaced an indexed doc_id; "
              f"{last.get('rows_rejected', 0):,} rows rejected); {m['docs']:,} docs in {len(m['shards'])} shards\n"
              f"  {drift_line(m.get('drift'))}")
    elif word == "delete":
        parser = _parser("delete", "tombstone doc_ids: searches and rerank --index never return them again")
        parser.add_argument("ids", help="IDS: text file (one doc_id a line) or Parquet with a doc_id column")
        args = parser.parse_args(rest)
        storage = _settings(args.config).get("storage")
        ids = read_ids(args.ids, storage_options(storage, args.ids))
        r = update.delete(args.index, ids, storage_options(storage, args.index))
        print(f"rayrank index delete: {args.index} generation {r['generation']}\n"
              f"  deleted {r['deleted']:,} docs; {r['not_found']:,} ids were not in the index")
    else:
        parser = _parser("compact", "rewrite shards without deleted rows; --retrain refits the codec's centroids")
        parser.add_argument("--retrain", action="store_true",
                            help="retrain the centroids on the live documents and re-encode every shard")
        args = parser.parse_args(rest)
        options = storage_options(_settings(args.config).get("storage"), args.index)
        r = update.compact(args.index, retrain=args.retrain, storage_options=options)
        print(f"rayrank index compact: {args.index} generation {r['generation']}\n"
              f"  dropped {r['dropped_rows']:,} dead rows; rewrote {r['rewritten_shards']:,} shards"
              f"{'; centroids retrained' if r['retrained'] else ''}\n"
              f"  {drift_line(None if r['retrained'] else r['drift_before'])}")
    return 0
