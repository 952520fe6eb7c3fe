"""Dense (single-vector) index build on Ray Data: a corpus (Parquet `doc_id`, `text`) into INDEX_DIR.

The late-interaction index job's machinery, with a bi-encoder in the actors: the same shard plan, row
validation and errors table (`rayrank.jobs._docs`), per-shard commit markers and manifest last, the
same actor pool (`rayrank.jobs._shards`). An actor encodes a shard's documents
(the model's own pooling, L2-normalised) and writes `shards/SHARD.npy` and `shards/SHARD.parquet`
before the shard's marker; the driver then drops doc_ids already indexed by an earlier shard (to
`_errors/`) and writes the manifest. A rerun of a killed build skips committed shards.

Usage: `rayrank dense-index DOCS INDEX_DIR --model MODEL` or `python -m rayrank.jobs.dense_index ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import PositiveInt

import rayrank
from rayrank.cli import command
from rayrank.config import ClusterConfig, Columns, StrictModel, load_yaml, merge_flags, parse_config
from rayrank.funnel.dense import DENSE_FORMAT, shard_files
from rayrank.index.format import npy_bytes, parquet_bytes, write_bytes_atomic
from rayrank.io.storage import filesystem, write_parquet_atomic
from rayrank.io.tables import DOC_KEYS, Shard
from rayrank.jobs._docs import deduplicate, valid_docs
from rayrank.jobs._output import steady_rate
from rayrank.jobs._phases import Phases
from rayrank.jobs._shards import ParquetInput, UnitActor, actor_config, claim, finish, model_record, run_units


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


class ShardEncoder(UnitActor):
    """Ray Data actor: loads the bi-encoder once, then encodes and writes whole shards."""

    def __init__(self, config: dict, in_options: dict, out_options: dict, layouts: dict[str, str]) -> None:
        from rayrank.funnel.dense import DenseEncoder

        self.config = DenseIndexConfig.model_validate(config)
        super().__init__(self.config.output, out_options)
        self.encoder = DenseEncoder(self.config.model, self.config.max_length, self.config.batch_size)
        self.fs_in, _ = filesystem(self.config.input, in_options)
        self.layouts = layouts

    def work(self, unit: dict[str, Any], phases: Phases) -> dict[str, Any]:
        shard, out = Shard(**unit), self.out
        kept, errors, rows_in = valid_docs(self.fs_in, shard, self.layouts[shard.path], self.config.columns, phases)
        with phases.timed("model_s"):
            vectors = self.encoder.encode(kept["text"].to_pylist())
        with phases.timed("write_s"):
            files = shard_files(shard.shard_id)
            docs = pa.table({"doc_id": kept["doc_id"], "row": pa.array(np.arange(kept.num_rows), pa.int64()),
                             "_row": kept["_row"]})
            write_bytes_atomic(out.fs, out.path(files["vectors"]), npy_bytes(vectors))
            write_bytes_atomic(out.fs, out.path(files["docs"]), parquet_bytes(docs))
            if errors.num_rows:
                write_parquet_atomic(errors, out.fs, out.stage("errors", f"{shard.shard_id}.parquet"))
        return {"shard": shard.shard_id, "ordinal": shard.ordinal, "source": shard.path, "rows_in": rows_in,
                "docs": kept.num_rows, "dim": self.encoder.dim, "invalid": errors.num_rows, "files": json.dumps(files)}


def run(config: DenseIndexConfig) -> dict[str, Any]:
    """Run (or resume) the build and return its manifest."""
    source = ParquetInput.open(config, DOC_KEYS)
    resolved = rayrank.resolve_model(config.model)
    identity = {"kind": "dense-index", "inputs": source.sizes,
                **config.model_dump(include={"model", "max_length", "columns", "shard_rows"})}
    job = claim("dense-index", config.output, source.out_options, identity,
                {"shard_rows": source.shard_rows(config.shard_rows, config.cluster.actors[1])}, config.overwrite)
    if job.finished is not None:
        return job.finished

    from rayrank.jobs._ray import connect

    connect(config.cluster.address)
    kwargs = {"config": actor_config(config), "in_options": source.in_options, "out_options": source.out_options,
              "layouts": source.layouts}
    encoded = run_units(job, "dense-index", source.shards(job.state["shard_rows"]), ShardEncoder, config.cluster,
                        kwargs)
    shards = deduplicate(job.out, encoded.done, lambda files: files["docs"], lambda sid, dups: dups["_row"])
    dim = max((int(s["dim"]) for s in encoded.done.values()), default=0)
    invalid = sum(int(s["invalid"]) for s in encoded.done.values())
    duplicates = sum(s.duplicates for s in shards)
    docs = sum(s.docs.num_rows for s in shards)
    encoded_now = sum(int(s["docs"]) for s in encoded.this_run)
    manifest = {
        "format": DENSE_FORMAT, "model": model_record(resolved), "dim": dim, "dtype": "float32", "normalized": True,
        "input": config.input, "output": config.output,
        "counts": {"rows_in": sum(int(s["rows_in"]) for s in encoded.done.values()), "docs_indexed": docs,
                   "rows_rejected": invalid + duplicates, "rows_invalid": invalid, "rows_duplicate": duplicates,
                   "rows_reused": encoded.reused},
        "shards": [{"id": s.id, "docs": s.docs.num_rows, "duplicates": s.duplicates, "files": s.files} for s in shards],
    }
    return finish(job, config, manifest, encoding_s=round(encoded.seconds, 3),
                  docs_per_s=round(encoded_now / encoded.seconds, 2) if encoded_now else None,
                  steady_docs_per_s=steady_rate(encoded.this_run, "docs"))


def summary(manifest: dict[str, Any]) -> str:
    c, t = manifest["counts"], manifest["timings"]
    return (f"rayrank dense-index: {manifest['output']}\n  {c['docs_indexed']:,} documents indexed (dim "
            f"{manifest['dim']}, {manifest['model']['name']}); {c['rows_rejected']:,} rows rejected; "
            f"reused {c['rows_reused']:,}\n  elapsed {t['elapsed_s']:.1f} s")


@command("dense-index")
def main(argv: list[str] | None = None) -> int:
    print(summary(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
