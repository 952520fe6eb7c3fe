"""Dense (single-vector) index build on Ray Data: a corpus (Parquet `doc_id`, `text`) into INDEX_DIR.

The late-interaction index job's machinery, with a bi-encoder in the actors: the same shard plan, row
validation and errors table (`rayrank.jobs.index._valid_docs`), per-shard commit markers and manifest
last (`rayrank.jobs._output.JobOutput`), the same actor pool. An actor encodes a shard's documents
(the model's own pooling, L2-normalised) and writes `shards/SHARD.npy` and `shards/SHARD.parquet`
before the shard's marker; the driver then drops doc_ids already indexed by an earlier shard (to
`_errors/`) and writes the manifest. A rerun of a killed build skips committed shards.

Usage: `rayrank dense-index DOCS INDEX_DIR --model MODEL` or `python -m rayrank.jobs.dense_index ...`.
"""

from __future__ import annotations

import argparse
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
from pydantic import PositiveInt

import rayrank
from rayrank.cli import command
from rayrank.config import ClusterConfig, Columns, StrictModel, load_yaml, merge_flags, parse_config
from rayrank.funnel.dense import DENSE_FORMAT, shard_files
from rayrank.index.format import npy_bytes, parquet_bytes, write_bytes_atomic
from rayrank.io.storage import filesystem, list_parquet, storage_options, write_parquet_atomic
from rayrank.io.tables import DOC_KEYS, Shard, error_rows, plan_shards, read_footers
from rayrank.jobs._output import JobOutput, job_identity, steady_rate
from rayrank.jobs._shards import as_columns, map_units, publish_errors, resume
from rayrank.jobs.index import _valid_docs


class DenseIndexConfig(StrictModel):
    """`rayrank dense-index`: every key can come from YAML; flags override the file."""

    input: str | None = None
    output: str | None = None
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    max_length: PositiveInt | None = None
    batch_size: PositiveInt = 32
    columns: Columns = Columns()
    cluster: ClusterConfig = ClusterConfig()
    shard_rows: PositiveInt = 10_000
    overwrite: bool = False
    storage: dict[str, Any] = {}


def parse_args(argv: list[str] | None) -> DenseIndexConfig:
    parser = argparse.ArgumentParser(prog="rayrank dense-index", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", nargs="?", help="DOCS: Parquet file, directory or glob (local or s3://)")
    parser.add_argument("output", nargs="?", help="INDEX_DIR (local or s3://)")
    parser.add_argument("--config", help="YAML config; flags override it")
    parser.add_argument("--model", help="sentence-transformers model: Hugging Face id or local directory")
    parser.add_argument("--actors", help="MIN,MAX actors (autoscaling pool), e.g. 1,4")
    parser.add_argument("--address", help="Ray address: 'auto' joins a running cluster; default starts a local Ray")
    parser.add_argument("--overwrite", action="store_true", help="replace an INDEX_DIR holding another build")
    args = parser.parse_args(argv)
    data = load_yaml(args.config) if args.config else {}
    flags = {"input": args.input, "output": args.output, "model": args.model,
             "overwrite": True if args.overwrite else None}
    data = merge_flags(data, flags, {"cluster": {"address": args.address, "actors": args.actors}}, args.config)
    config = parse_config(DenseIndexConfig, data, args.config or "command-line flags")
    if not config.input or not config.output:
        parser.error("DOCS and INDEX_DIR are required (as arguments or `input:`/`output:` in --config)")
    return config


class ShardEncoder:
    """Ray Data actor: loads the bi-encoder once, then encodes and writes whole shards."""

    def __init__(self, config: dict, in_options: dict, out_options: dict, layouts: dict[str, str]) -> None:
        from rayrank.jobs._ray import quiet_worker

        from rayrank.funnel.dense import DenseEncoder

        quiet_worker()
        self.config = DenseIndexConfig.model_validate(config)
        self.encoder = DenseEncoder(self.config.model, self.config.max_length, self.config.batch_size)
        self.fs_in, _ = filesystem(self.config.input, in_options)
        self.out = JobOutput(*filesystem(self.config.output, out_options))
        self.layouts = layouts

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        return as_columns([self._encode_shard(Shard(**json.loads(s))) for s in batch["shard"]])

    def _encode_shard(self, shard: Shard) -> dict[str, Any]:
        started, started_at = time.perf_counter(), time.time()
        out = self.out
        kept, errors, rows_in = _valid_docs(self.fs_in, shard, self.layouts[shard.path], self.config)
        vectors = self.encoder.encode(kept["text"].to_pylist())
        files = shard_files(shard.shard_id)
        docs = pa.table({"doc_id": kept["doc_id"], "row": pa.array(np.arange(kept.num_rows), pa.int64()),
                         "_row": kept["_row"]})
        write_bytes_atomic(out.fs, out.path(files["vectors"]), npy_bytes(vectors))
        write_bytes_atomic(out.fs, out.path(files["docs"]), parquet_bytes(docs))
        if errors.num_rows:
            write_parquet_atomic(errors, out.fs, out.stage("errors", f"{shard.shard_id}.parquet"))
        stats = {"shard": shard.shard_id, "ordinal": shard.ordinal, "source": shard.path, "rows_in": rows_in,
                 "docs": kept.num_rows, "dim": self.encoder.dim, "invalid": errors.num_rows, "files": json.dumps(files),
                 "seconds": time.perf_counter() - started, "started_at": started_at, "finished_at": time.time()}
        out.commit_unit("shards", shard.shard_id, stats)
        return stats


def deduplicate(out: JobOutput, done: dict[str, dict]) -> list[dict[str, Any]]:
    """Keep each doc_id in its first shard (plan order); idempotent, so a rerun after a kill agrees."""
    seen: set[str] = set()
    entries = []
    for sid, stats in sorted(done.items(), key=lambda kv: int(kv[1]["ordinal"])):
        files = json.loads(stats["files"])
        with out.fs.open(out.path(files["docs"]), "rb") as handle:
            docs = pq.read_table(io.BytesIO(handle.read()))
        dup = np.array([d in seen for d in docs["doc_id"].to_pylist()], dtype=bool)
        if dup.any():
            dups = docs.filter(pa.array(dup))
            errors = error_rows(dups.select(["doc_id"]), ["duplicate doc_id: indexed from an earlier shard"] * len(dups),
                                [stats["source"]] * len(dups), dups["_row"])
            write_parquet_atomic(errors, out.fs, out.path("_errors", f"duplicates-{sid}.parquet"))
            docs = docs.filter(pa.array(~dup))
            write_bytes_atomic(out.fs, out.path(files["docs"]), parquet_bytes(docs))
        seen.update(docs["doc_id"].to_pylist())
        entries.append({"id": sid, "docs": docs.num_rows, "duplicates": int(dup.sum()), "files": files})
    return entries


def run(config: DenseIndexConfig) -> dict[str, Any]:
    """Run (or resume) the build and return its manifest."""
    started_at, started = datetime.now(timezone.utc), time.perf_counter()
    in_options = storage_options(config.storage, config.input)
    out_options = storage_options(config.storage, config.output)
    fs_in, in_root = filesystem(config.input, in_options)
    fs_out, out_root = filesystem(config.output, out_options)
    files = list_parquet(fs_in, in_root)
    groups, layouts = read_footers(fs_in, files, config.columns, DOC_KEYS)
    total_rows = sum(sum(counts) for counts in groups.values())
    resolved = rayrank.resolve_model(config.model)
    identity = {"kind": "dense-index", "inputs": [(f, fs_in.size(f)) for f in files],
                **config.model_dump(include={"model", "max_length", "columns", "shard_rows"})}
    job_id = job_identity(identity)
    out = JobOutput(fs_out, out_root)
    target = min(config.shard_rows, max(1, math.ceil(total_rows / (4 * config.cluster.actors[1]))))
    state = out.prepare(job_id, {"shard_rows": target, "started": started_at.isoformat()}, config.overwrite)
    if (manifest := out.manifest()) is not None:
        out.cleanup()
        return manifest

    shards = plan_shards(fs_in, groups, state["shard_rows"])
    done, reused = resume(out, [s.shard_id for s in shards], "rows_in", "dense-index", "docs")
    todo = [s for s in shards if s.shard_id not in done]

    from rayrank.jobs._ray import connect

    connect(config.cluster.address)
    encode_started = time.perf_counter()
    encoded_now = 0
    kwargs = {"config": config.model_dump(), "in_options": in_options, "out_options": out_options,
              "layouts": layouts}
    for row in map_units([json.dumps(asdict(s)) for s in todo], ShardEncoder, config.cluster, kwargs) if todo else []:
        done[row["shard"]] = row
        encoded_now += int(row["docs"])
        print(f"[dense-index] shards {len(done)}/{len(shards)}  docs {reused + encoded_now:,}", file=sys.stderr)
    encode_seconds = time.perf_counter() - encode_started

    entries = deduplicate(out, done)
    publish_errors(out, list(done))
    dim = max((int(s["dim"]) for s in done.values()), default=0)
    invalid = sum(int(s["invalid"]) for s in done.values())
    duplicates = sum(e["duplicates"] for e in entries)
    docs = sum(e["docs"] for e in entries)
    manifest = {
        "format": DENSE_FORMAT, "job_id": job_id, "rayrank_version": rayrank.__version__,
        "model": {"name": resolved.name, "source": resolved.source, "path": str(resolved.path)},
        "dim": dim, "dtype": "float32", "normalized": True, "input": config.input, "output": config.output,
        "counts": {"rows_in": sum(int(s["rows_in"]) for s in done.values()), "docs_indexed": docs,
                   "rows_rejected": invalid + duplicates, "rows_invalid": invalid, "rows_duplicate": duplicates,
                   "rows_reused": reused},
        "timings": {"started": state["started"], "finished": datetime.now(timezone.utc).isoformat(),
                    "elapsed_s": round(time.perf_counter() - started, 3), "encoding_s": round(encode_seconds, 3),
                    "docs_per_s": round(encoded_now / encode_seconds, 2) if encoded_now else None,
                    "steady_docs_per_s": steady_rate([done[s.shard_id] for s in todo], "docs")},
        "config": config.model_dump(exclude={"storage"}),
        "shards": entries,
    }
    out.finish(manifest)
    return manifest


@command("dense-index")
def main(argv: list[str] | None = None) -> int:
    manifest = run(parse_args(argv))
    c, t = manifest["counts"], manifest["timings"]
    print(f"rayrank dense-index: {manifest['output']}\n  {c['docs_indexed']:,} documents indexed (dim "
          f"{manifest['dim']}, {manifest['model']['name']}); {c['rows_rejected']:,} rows rejected; "
          f"reused {c['rows_reused']:,}\n  elapsed {t['elapsed_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
