"""What the index builds (`rayrank index`, its `add`, `rayrank dense-index`) share: a shard's valid documents,
the late-interaction shard indexer, and keeping each doc_id in the first shard that indexed it."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayrank.config import Columns, IndexJobConfig
from rayrank.index import build
from rayrank.index.compress import ResidualCodec
from rayrank.index.format import CODEC, parquet_bytes, sha256, shard_files, write_bytes_atomic
from rayrank.io.storage import filesystem, join, retrying, write_parquet_atomic
from rayrank.io.tables import DOC_KEYS, Shard, error_rows, read_shard, split_duplicates, split_valid
from rayrank.jobs._output import JobOutput
from rayrank.jobs._phases import Phases
from rayrank.jobs._shards import UnitActor


def valid_docs(fs_in, shard: Shard, layout: str, columns: Columns, phases: Phases | None = None
               ) -> tuple[pa.Table, pa.Table, int]:
    """(valid first-occurrence rows, errors, rows read) of one shard."""
    phases = phases or Phases()
    with phases.timed("read_s"):
        table, layout_errors = retrying(f"reading shard {shard.shard_id} of {shard.path}",
                                        lambda: read_shard(fs_in, shard, layout, columns, DOC_KEYS))
    with phases.timed("validate_s"):
        valid, invalid = split_valid(table, DOC_KEYS)
        kept, duplicates = split_duplicates(valid, ("doc_id",))
    return kept, pa.concat_tables([layout_errors, invalid, duplicates]), table.num_rows + layout_errors.num_rows


@dataclass
class IndexedShard:
    """A committed shard after deduplication: its files (from its marker), doc table, that table's bytes."""

    id: str
    files: dict[str, Any]
    docs: pa.Table
    data: bytes
    duplicates: int


def deduplicate(out: JobOutput, done: dict[str, dict], docs_path: Callable[[dict], str],
                source_rows: Callable[[str, pa.Table], Any]) -> list[IndexedShard]:
    """Keep each doc_id in its first shard (plan order): a later copy leaves its shard's doc table (its vectors
    stay, unreferenced) for `_errors/duplicates-SHARD.parquet`, with its input row from `source_rows(shard id,
    duplicates)`. Idempotent: a rerun after a kill finds the same duplicates, or none where they were dropped."""
    seen: set[str] = set()
    shards = []
    for sid, stats in sorted(done.items(), key=lambda kv: int(kv[1]["ordinal"])):
        files = json.loads(stats["files"])
        path = out.path(docs_path(files))
        with out.fs.open(path, "rb") as handle:
            data = handle.read()
        docs = pq.read_table(io.BytesIO(data))
        dup = np.array([d in seen for d in docs["doc_id"].to_pylist()], dtype=bool)
        if dup.any():
            dups = docs.filter(pa.array(dup))
            reasons = ["duplicate doc_id: indexed from an earlier shard"] * len(dups)
            errors = error_rows(dups.select(["doc_id"]), reasons, [stats["source"]] * len(dups), source_rows(sid, dups))
            write_parquet_atomic(errors, out.fs, out.path("_errors", f"duplicates-{sid}.parquet"))
            docs = docs.filter(pa.array(~dup))
            data = parquet_bytes(docs)
            write_bytes_atomic(out.fs, path, data)
        seen.update(docs["doc_id"].to_pylist())
        shards.append(IndexedShard(sid, files, docs, data, int(dup.sum())))
    return shards


class ShardIndexer(UnitActor):
    """Ray Data actor: loads the encoder and the codec once, then encodes and writes whole shards.

    A build commits its units in INDEX_DIR's staging; an add (jobs/index_update.py) in `staging`
    (`INDEX_DIR/_update`), and names its shards' files `prefix` + shard id, so they never meet the
    files an older generation reads.
    """

    def __init__(self, config: dict, in_options: dict, out_options: dict, layouts: dict[str, str],
                 staging: str | None = None, prefix: str = "", codec: str = CODEC) -> None:
        self.config = IndexJobConfig.model_validate(config)
        super().__init__(staging or self.config.output, out_options)
        self.reranker = self.load_engine(self.config.engine, self.config.cluster)
        self.fs_in, _ = filesystem(self.config.input, in_options)
        self.fs_index, self.index_root = filesystem(self.config.output, out_options)
        self.codec = ResidualCodec.from_bytes(self.fs_index.cat_file(join(self.index_root, codec)))
        self.layouts, self.prefix = layouts, prefix

    def work(self, unit: dict[str, Any], phases: Phases) -> dict[str, Any]:
        shard = Shard(**unit)
        config, out, sid = self.config, self.out, shard.shard_id
        fid = self.prefix + sid  # the shard's id in the manifest, and its files' names
        kept, errors, rows_in = valid_docs(self.fs_in, shard, self.layouts[shard.path], config.columns, phases)
        with self.gate.engine(phases):  # tokenizing, the encoder and pooling
            embeddings = build.encode(self.reranker.scorer, kept["text"].to_pylist(), config.pool_factor)
        with phases.timed("write_s"):  # compression and the shard's files
            data, packed = build.pack_shard(fid, kept["doc_id"].to_pylist(), embeddings, self.codec,
                                            config.compression)
            files = {role: {"path": path, "bytes": len(data[path]),
                            "sha256": retrying(f"writing {path}", lambda path=path: write_bytes_atomic(
                                self.fs_index, join(self.index_root, path), data[path]))}
                     for role, path in shard_files(fid, config.compression).items()}
            # Where each document came from, for the cross-shard duplicate report.
            rows = pa.table({"doc_id": kept["doc_id"], "_row": kept["_row"]})
            retrying(f"staging the rows of shard {sid}",
                     lambda: write_parquet_atomic(rows, out.fs, out.stage("rows", f"{fid}.parquet")))
            if errors.num_rows:
                retrying(f"staging the errors of shard {sid}",
                         lambda: write_parquet_atomic(errors, out.fs, out.stage("errors", f"{sid}.parquet")))
        return {"shard": sid, "ordinal": shard.ordinal, "source": shard.path, "rows_in": rows_in,
                "docs": packed["docs"], "tokens": packed["tokens"], "vector_bytes": packed["vector_bytes"],
                "residual_error_sum": packed["residual_error_sum"], "invalid": errors.num_rows,
                "files": json.dumps(files)}


def staged_rows(out: JobOutput):
    """A shard's input rows of given doc_ids, from the rows its actor staged."""

    def rows(sid: str, docs: pa.Table) -> list[int | None]:
        with out.fs.open(out.stage("rows", f"{sid}.parquet"), "rb") as handle:
            staged = pq.read_table(handle)
        by_id = dict(zip(staged["doc_id"].to_pylist(), staged["_row"].to_pylist()))
        return [by_id.get(d) for d in docs["doc_id"].to_pylist()]

    return rows


def manifest_entry(shard: IndexedShard) -> dict[str, Any]:
    """The manifest's record of a shard, its doc table's checksum updated after deduplication."""
    shard.files["docs"].update(sha256=sha256(shard.data), bytes=len(shard.data))
    tokens = int(np.asarray(shard.docs["tokens"].to_numpy(), dtype=np.int64).sum())
    return {"id": shard.id, "docs": shard.docs.num_rows, "tokens": tokens, "duplicates": shard.duplicates,
            "files": shard.files}
