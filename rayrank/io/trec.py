"""TREC run files (`qid Q0 docid rank score tag`) in and out of rayrank's tables.

In: a first stage's run (BM25 from Pyserini, Anserini, any trec_eval-style run) becomes the long
candidate layout, its rank and score kept as `first_rank` and `first_score` (not `rank`/`score`,
which the reranker writes), with the query text from a queries table. Out: a reranked table becomes
a run, ranked by score (descending; ties by doc id, as the job's `rank` column), at most `top_n` a
query. Pure pyarrow, no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayrank.config import Columns
from rayrank.errors import InvalidInputError
from rayrank.io.storage import filesystem, list_parquet, put_atomic
from rayrank.io.tables import QUERY_KEYS, error_rows, read_unique

RUN_SCHEMA = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("first_rank", pa.int64()),
                        ("first_score", pa.float64()), ("_line", pa.int64())])
FORMAT = "'qid Q0 docid rank score tag' (six fields separated by spaces or tabs)"
CHUNK_LINES = 1_000_000


def parse_run_lines(lines: Iterator[str], source: str) -> pa.Table:
    """Parse run lines into `RUN_SCHEMA` (`_line`: 1-based line number); blank lines are skipped.

    A line without six fields, or whose rank is not an integer or whose score is not a finite number, is
    refused with its line number: a run is a machine's output, and a bad line means a broken file.
    """
    chunks, columns = [], ([], [], [], [], [])

    def flush() -> None:
        chunks.append(pa.table(dict(zip(RUN_SCHEMA.names, columns)), schema=RUN_SCHEMA))
        for column in columns:
            column.clear()

    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        problem = None
        if len(parts) != 6:
            problem = f"{len(parts)} fields"
        else:
            try:
                rank = int(parts[3])
            except ValueError:
                problem = f"rank {parts[3]!r} is not an integer"
            else:
                try:
                    score = float(parts[4])
                    problem = None if math.isfinite(score) else f"score {parts[4]!r} is not a finite number"
                except ValueError:
                    problem = f"score {parts[4]!r} is not a number"
        if problem:
            raise InvalidInputError(f"{source}:{number}: expected {FORMAT}; {problem} in {line.rstrip()!r}")
        for column, value in zip(columns, (parts[0], parts[2], rank, score, number)):
            column.append(value)
        if len(columns[0]) >= CHUNK_LINES:
            flush()
    flush()
    return pa.concat_tables(chunks)


def read_run(path: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """A run file (local or s3://; `.gz` and other compressions fsspec knows by extension) as `RUN_SCHEMA`."""
    fs, root = filesystem(path, storage_options)
    if not fs.isfile(root):
        raise InvalidInputError(f"run {path} is not a file; name a TREC run file ({FORMAT})")
    with fs.open(root, "rt", compression="infer", encoding="utf-8") as handle:
        return parse_run_lines(handle, path)


def candidates_from_run(run: str, queries: str, storage_options: dict[str, Any] | None = None,
                        columns: Columns | None = None) -> tuple[pa.Table, pa.Table]:
    """(candidates, errors): the run's rows in the long layout with their query text, and error rows.

    Candidates have `query_id`, `query`, `doc_id`, `first_rank`, `first_score`, in the run's order;
    document text is not joined here (the corpus lookup by doc id does that). `queries` is Parquet
    (`query_id`, `query`, remappable by `columns`). A run row whose query id is not a valid row of the
    queries table becomes an error row (`ERRORS_SCHEMA`; `source_row` is its line number), as do the
    invalid or duplicate rows of the queries table itself.
    """
    table = read_run(run, storage_options)
    fs, root = filesystem(queries, storage_options)
    known, query_errors, _ = read_unique(fs, list_parquet(fs, root), columns or Columns(), QUERY_KEYS, "query_id")
    lookup = pc.index_in(table["query_id"], value_set=known["query_id"].combine_chunks())
    missing = lookup.is_null().to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(missing)
    errors = error_rows(table.take(bad).drop_columns(["_line"]),
                        [f"query_id {q!r} (line {n}) is not a valid row of the queries table {queries}"
                         for q, n in zip(table["query_id"].take(bad).to_pylist(), table["_line"].take(bad).to_pylist())],
                        [run] * len(bad), table["_line"].take(bad))
    found = table.filter(pa.array(~missing))
    text = known["query"].take(lookup.filter(pa.array(~missing)))
    candidates = pa.table({"query_id": found["query_id"], "query": text, "doc_id": found["doc_id"],
                           "first_rank": found["first_rank"], "first_score": found["first_score"]})
    return candidates, pa.concat_tables([query_errors, errors])


def run_lines(table: pa.Table, tag: str = "rayrank", top_n: int | None = None, score: str = "score") -> Iterator[str]:
    """TREC run lines (with newlines) of a table with `query_id`, `doc_id` and a `score` column.

    Ranks are recomputed: by score descending, ties by doc id ascending, so they equal the rerank job's
    `rank` column. trec_eval re-sorts by score and breaks ties by doc id *descending*; tied scores are the
    only place where its order and this rank differ.
    """
    if not tag or any(ch.isspace() for ch in tag):
        raise InvalidInputError(f"tag must be one word without white space, got {tag!r}")
    if top_n is not None and top_n < 1:
        raise InvalidInputError(f"top_n must be a positive integer, got {top_n}")
    missing = [c for c in ("query_id", "doc_id", score) if c not in table.column_names]
    if missing:
        raise InvalidInputError(f"cannot write a TREC run: no column {', '.join(map(repr, missing))} "
                                f"(columns: {', '.join(table.column_names)})")
    table = table.select(["query_id", "doc_id", score])
    if (nulls := table[score].null_count + table["query_id"].null_count + table["doc_id"].null_count):
        raise InvalidInputError(f"cannot write a TREC run: {nulls} row(s) have a null query_id, doc_id or {score}")
    table = table.sort_by([("query_id", "ascending"), (score, "descending"), ("doc_id", "ascending")])
    qids = table["query_id"].to_pylist()
    dids = table["doc_id"].to_pylist()
    for value in (qids, dids):
        if (spaced := next((str(v) for v in value if any(ch.isspace() for ch in str(v))), None)) is not None:
            raise InvalidInputError(f"cannot write a TREC run: id {spaced!r} holds white space, which the "
                                    "format uses as its separator")
    # float32 scores round-trip with 9 significant digits; float64 with repr.
    as_text = (lambda v: f"{v:.9g}") if pa.types.is_float32(table[score].type) else repr
    rank, previous = 0, None
    for qid, did, value in zip(qids, dids, table[score].to_pylist()):
        rank = rank + 1 if qid == previous else 1
        previous = qid
        if top_n is None or rank <= top_n:
            yield f"{qid} Q0 {did} {rank} {as_text(float(value))} {tag}\n"


def write_run(table: pa.Table, path: str, tag: str = "rayrank", top_n: int | None = None,
              storage_options: dict[str, Any] | None = None) -> int:
    """Publish `table` as one TREC run file at `path` (local or s3://, whole or not at all); returns its lines."""
    lines = list(run_lines(table, tag, top_n))
    fs, target = filesystem(path, storage_options)
    put_atomic("".join(lines).encode(), fs, target)
    return len(lines)


def is_parquet(path: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether `path` is Parquet: a directory (a dataset) or a file starting with Parquet's magic bytes."""
    fs, root = filesystem(path, storage_options)
    if fs.isdir(root):
        return True
    with fs.open(root, "rb") as handle:
        return handle.read(4) == b"PAR1"
