"""What the two index builds (`rayrank index`, `rayrank dense-index`) share: a shard's valid documents, and
keeping each doc_id in the first shard that indexed it."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayrank.config import Columns
from rayrank.index.format import parquet_bytes, write_bytes_atomic
from rayrank.io.storage import retrying, write_parquet_atomic
from rayrank.io.tables import DOC_KEYS, Shard, error_rows, read_shard, split_duplicates, split_valid
from rayrank.jobs._output import JobOutput
from rayrank.jobs._phases import Phases


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
