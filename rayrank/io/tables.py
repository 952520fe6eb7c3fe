"""Query-candidate tables: layouts, shards, validation into an errors table, and per-query ranking.

Pure pyarrow/numpy, no Ray: the rerank job and the index build run these inside actors and tasks.
A row is never dropped silently: it is scored, or it lands in the errors table with a reason.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from rayrank.config import Columns
from rayrank.errors import InputSchemaError
from rayrank.validate import text_problem

Layout = Literal["long", "nested"]
KEYS = ("query_id", "query", "doc_id", "text")
DOC_KEYS = ("doc_id", "text")  # a corpus to index
LOG_KEYS = ("query_id", "query", "doc_id")  # candidates by id, their text in a corpus (or an index)
QUERY_KEYS = ("query_id", "query")  # queries to search
ERRORS_SCHEMA = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("reason", pa.string()),
                           ("source", pa.string()), ("source_row", pa.int64()), ("row", pa.string())])


@dataclass(frozen=True)
class Shard:
    """A unit of work and of resume: `rows` rows of one file starting at absolute row `first_row`.

    Read as row groups `row_groups`, skipping `skip` rows of the first, so a file written as one
    huge row group still splits across actors.
    """

    ordinal: int
    path: str
    row_groups: tuple[int, ...]
    skip: int
    first_row: int
    rows: int
    shard_id: str


def detect_layout(schema: pa.Schema, columns: Columns, path: str, keys: tuple[str, ...] = KEYS) -> Layout:
    """Long layout when every key column is present; nested when `candidates` is a list of structs.

    `keys` other than the query-candidate KEYS (e.g. DOC_KEYS for a corpus) allow the long layout only.
    """
    names = set(schema.names)
    if all(getattr(columns, k) in names for k in keys):
        return "long"
    if keys != KEYS:
        missing = [getattr(columns, k) for k in keys if getattr(columns, k) not in names]
        raise InputSchemaError(f"{path}: missing required column(s) {', '.join(missing)} "
                               f"(found: {', '.join(schema.names)}); remap names under `columns:` in the config")
    if columns.candidates in names:
        field = schema.field(columns.candidates).type
        inner = field.value_type if pa.types.is_list(field) or pa.types.is_large_list(field) else None
        missing = [c for c in (columns.query_id, columns.query) if c not in names]
        if inner is None or not pa.types.is_struct(inner):
            raise InputSchemaError(f"{path}: column {columns.candidates!r} must be list<struct<doc_id, text>>, "
                                   f"got {field}")
        missing += [f"{columns.candidates}.{c}" for c in (columns.doc_id, columns.text)
                    if inner.get_field_index(c) < 0]
        if missing:
            raise InputSchemaError(f"{path}: missing required column(s) {', '.join(missing)}")
        return "nested"
    missing = [getattr(columns, k) for k in KEYS if getattr(columns, k) not in names]
    raise InputSchemaError(f"{path}: missing required column(s) {', '.join(missing)} "
                           f"(found: {', '.join(schema.names)}); remap names under `columns:` in the config")


def read_footers(fs: AbstractFileSystem, files: list[str], columns: Columns, keys: tuple[str, ...] = KEYS
                 ) -> tuple[dict[str, list[int]], dict[str, Layout]]:
    """Row counts per row group and the layout of every file, failing early on a bad file or column."""
    groups: dict[str, list[int]] = {}
    layouts: dict[str, Layout] = {}
    for path in files:
        try:
            with fs.open(path, "rb") as handle:
                meta = pq.ParquetFile(handle).metadata
                schema = meta.schema.to_arrow_schema()
        except Exception as exc:
            raise InputSchemaError(f"{path}: not a readable Parquet file ({exc})") from exc
        layouts[path] = detect_layout(schema, columns, path, keys)
        groups[path] = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return groups, layouts


def plan_shards(fs: AbstractFileSystem, groups: dict[str, list[int]], target_rows: int) -> list[Shard]:
    """Cut files into shards of about `target_rows` rows: whole row groups, or slices of a big one.

    Deterministic for the same files and target, so a resumed job finds its committed shards.
    """
    shards: list[Shard] = []

    def add(path: str, size: int, rgs: list[int], skip: int, first: int, rows: int) -> None:
        key = f"{path}|{size}|{rgs[0]}-{rgs[-1]}|{skip}+{rows}"
        shards.append(Shard(len(shards), path, tuple(rgs), skip, first, rows,
                            hashlib.sha1(key.encode()).hexdigest()[:16]))

    for path, counts in groups.items():
        size = fs.size(path)
        absolute = 0
        pending: list[int] = []
        pending_rows = pending_first = 0
        for rg, count in enumerate(counts):
            if count > target_rows:
                if pending:
                    add(path, size, pending, 0, pending_first, pending_rows)
                    pending, pending_rows = [], 0
                for skip in range(0, count, target_rows):
                    add(path, size, [rg], skip, absolute + skip, min(target_rows, count - skip))
            else:
                if not pending:
                    pending_first = absolute
                pending.append(rg)
                pending_rows += count
                if pending_rows >= target_rows:
                    add(path, size, pending, 0, pending_first, pending_rows)
                    pending, pending_rows = [], 0
            absolute += count
        if pending:
            add(path, size, pending, 0, pending_first, pending_rows)
    return shards


def read_shard(fs: AbstractFileSystem, shard: Shard, layout: Layout, columns: Columns,
               keys: tuple[str, ...] = KEYS) -> tuple[pa.Table, pa.Table]:
    """Read a shard as canonical long rows; returns (rows with `_source`, `_row`, `_seq`), nested errors."""
    with fs.open(shard.path, "rb") as handle:
        table = pq.ParquetFile(handle).read_row_groups(list(shard.row_groups)).slice(shard.skip, shard.rows)
    source_rows = pa.array(np.arange(shard.first_row, shard.first_row + table.num_rows, dtype=np.int64))
    errors = _empty_errors()
    if layout == "nested":
        table, source_rows, errors = _explode(table, source_rows, columns, shard.path)
    else:
        renames = {getattr(columns, k): k for k in keys}
        table = table.rename_columns([renames.get(n, n) for n in table.column_names])
    # A global order (shard ordinal, row) decides which of two duplicate rows is kept: the first.
    seq = pc.add(pa.scalar(shard.ordinal << 32, pa.int64()), source_rows)
    table = table.append_column("_source", pa.array([shard.path] * table.num_rows, pa.string()))
    return table.append_column("_row", source_rows).append_column("_seq", seq), errors


def _explode(table: pa.Table, source_rows: pa.Array, columns: Columns, path: str
             ) -> tuple[pa.Table, pa.Array, pa.Table]:
    candidates = table[columns.candidates].combine_chunks()
    null_rows = np.flatnonzero(candidates.is_null().to_numpy(zero_copy_only=False))
    parents = pc.list_parent_indices(candidates)
    flat = pc.list_flatten(candidates)
    query_level = table.drop_columns([columns.candidates]).take(parents)
    renames = {columns.query_id: "query_id", columns.query: "query"}
    query_level = query_level.rename_columns([renames.get(n, n) for n in query_level.column_names])
    long = query_level.append_column("doc_id", flat.field(columns.doc_id)).append_column("text", flat.field(columns.text))
    for name in flat.type:
        if name.name not in (columns.doc_id, columns.text):
            long = long.append_column(name.name, flat.field(name.name))
    errors = error_rows(table.take(null_rows), [f"{columns.candidates} is null"] * len(null_rows),
                        [path] * len(null_rows), source_rows.take(pa.array(null_rows, pa.int64())))
    return long, source_rows.take(parents), errors


def _as_string(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return column if pa.types.is_string(column.type) else pc.cast(column, pa.string())


def _empty_errors() -> pa.Table:
    return ERRORS_SCHEMA.empty_table()


def error_rows(rows: pa.Table, reasons: list[str], sources: list[str], source_rows) -> pa.Table:
    """Errors-table rows keeping each original row whole (as JSON), whatever its column types."""
    records = rows.drop_columns([c for c in ("_source", "_row", "_seq") if c in rows.column_names]).to_pylist()

    def ident(record: dict, key: str) -> str | None:
        value = record.get(key)
        return None if value is None else str(value)

    return pa.table({
        "query_id": [ident(r, "query_id") for r in records],
        "doc_id": [ident(r, "doc_id") for r in records],
        "reason": reasons,
        "source": sources,
        "source_row": pa.array(source_rows, pa.int64()),
        "row": [json.dumps(r, default=str, ensure_ascii=False) for r in records],
    }, schema=ERRORS_SCHEMA)


def split_valid(table: pa.Table, keys: tuple[str, ...] = KEYS) -> tuple[pa.Table, pa.Table]:
    """Separate scorable rows from rows with a null id or a null, empty or non-string query/text.

    Valid rows get string ids, so every output file has one schema whatever the input id type.
    Only the `keys` columns are checked (DOC_KEYS for a corpus).
    """
    problems: list[str | None] = [None] * table.num_rows
    for key in [k for k in ("query_id", "doc_id") if k in keys]:
        for i in np.flatnonzero(table[key].is_null().to_numpy(zero_copy_only=False)):
            problems[i] = problems[i] or f"{key} is null"
    for key in [k for k in ("query", "text") if k in keys]:
        column = table[key]
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            values = column.to_pylist()
            for i, value in enumerate(values):
                if problems[i] is None and (problem := text_problem(value)):
                    problems[i] = f"{key} {problem}"
        else:
            for i in range(table.num_rows):
                problems[i] = problems[i] or f"{key} is {column.type}, not a string"
    bad = np.array([p is not None for p in problems], dtype=bool)
    bad_idx = np.flatnonzero(bad)
    errors = error_rows(table.take(bad_idx), [problems[i] for i in bad_idx],
                        table["_source"].take(bad_idx).to_pylist(), table["_row"].take(bad_idx))
    valid = table.filter(pa.array(~bad))
    for key in keys:
        index = valid.schema.get_field_index(key)
        valid = valid.set_column(index, key, _as_string(valid[key]))
    return valid, errors


def bucket_of(query_ids: pa.ChunkedArray | pa.Array, buckets: int) -> np.ndarray:
    """Stable hash bucket per query id, so one query's rows from any shard meet in one bucket."""
    digests = [int.from_bytes(hashlib.blake2b(q.encode(), digest_size=8).digest(), "little")
               for q in query_ids.to_pylist()]
    return np.array(digests, dtype=np.uint64) % np.uint64(buckets)


def split_duplicates(table: pa.Table, keys: tuple[str, ...]) -> tuple[pa.Table, pa.Table]:
    """(rows with the first occurrence of each `keys` value, errors for the later ones), input order kept.

    "First" is by `_seq` (shard ordinal, row), so which copy is kept does not depend on how the
    input was split; each error's reason names where the kept copy came from.
    """
    by_key = table.sort_by([(k, "ascending") for k in keys] + [("_seq", "ascending")])
    dup = np.zeros(by_key.num_rows, dtype=bool)
    if by_key.num_rows:
        dup[1:] = True
        for key in keys:
            values = by_key[key].to_numpy(zero_copy_only=False)
            dup[1:] &= values[1:] == values[:-1]
    first_idx = np.maximum.accumulate(np.where(~dup, np.arange(len(dup)), 0))
    dup_idx = np.flatnonzero(dup)
    sources, rows = by_key["_source"].to_pylist(), by_key["_row"].to_pylist()
    label = keys[0] if len(keys) == 1 else f"({', '.join(keys)})"
    reasons = [f"duplicate {label}: first seen at row {rows[first_idx[i]]} of {sources[first_idx[i]]}"
               for i in dup_idx]
    errors = error_rows(by_key.take(dup_idx), reasons, [sources[i] for i in dup_idx], [rows[i] for i in dup_idx])
    return by_key.filter(pa.array(~dup)).sort_by("_seq"), errors


def read_unique(fs: AbstractFileSystem, files: list[str], columns: Columns, keys: tuple[str, ...],
                unique: str) -> tuple[pa.Table, pa.Table, int]:
    """A small table (queries, a corpus) read whole: (valid rows with the first of each `unique` id,
    errors with reasons, rows read). Fails early, naming the file, on a missing column."""
    groups, layouts = read_footers(fs, files, columns, keys)
    valid, errors, rows_in = [], [], 0
    for shard in plan_shards(fs, groups, max(1, sum(sum(c) for c in groups.values()))):
        table, layout_errors = read_shard(fs, shard, layouts[shard.path], columns, keys)
        good, bad = split_valid(table, keys)
        valid.append(good)
        errors += [layout_errors, bad]
        rows_in += table.num_rows + layout_errors.num_rows
    kept, duplicates = split_duplicates(pa.concat_tables(valid, promote_options="permissive"), (unique,))
    return kept, pa.concat_tables(errors + [duplicates]), rows_in


def rank_queries(scored: pa.Table, top_n: int | None, passthrough: list[str]) -> tuple[pa.Table, pa.Table]:
    """Rank every query's rows (1 = best score; ties by doc_id) after moving duplicates to errors.

    Of duplicate (query_id, doc_id) rows the first in input order (`_seq`) is kept.
    """
    kept, errors = split_duplicates(scored, ("query_id", "doc_id"))
    ordered = kept.sort_by([("query_id", "ascending"), ("score", "descending"), ("doc_id", "ascending")])
    qid = ordered["query_id"].to_numpy(zero_copy_only=False)
    starts = np.ones(len(qid), dtype=bool)
    starts[1:] = qid[1:] != qid[:-1]
    positions = np.arange(len(qid))
    rank = positions - np.maximum.accumulate(np.where(starts, positions, 0)) + 1
    ranked = pa.table({"query_id": ordered["query_id"], "doc_id": ordered["doc_id"],
                       "score": pc.cast(ordered["score"], pa.float32()), "rank": pa.array(rank, pa.int32()),
                       **{c: ordered[c] for c in passthrough if c in ordered.column_names}})
    if top_n is not None:
        ranked = ranked.filter(pc.less_equal(ranked["rank"], top_n))
    return ranked, errors
