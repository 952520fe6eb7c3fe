"""Write a synthetic query-candidate input of any size: short random-word pairs, 100 candidates a query.

Short pairs make tokenizing as costly as a tiny model, the case where overlapping the two matters.
Files of `--rows-per-file` rows (row groups of 100,000) so a 10,000,000-row input splits into many
shards. Deterministic for a seed. Example:

    python bench/synthetic.py /tmp/synthetic-10m --rows 10000000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

WORDS = np.array(("the a an of to and in is was for on that with as by it at from this be are or which not what how why "
                  "who when where ray cluster python data model query document search rank score fish sea light sun "
                  "cat dog run fast slow big small new old good bad one two three").split())
PER_QUERY = 100


def _texts(rng: np.random.Generator, rows: int, low: int, high: int) -> list[str]:
    lengths = rng.integers(low, high + 1, rows)
    words = WORDS[rng.integers(0, len(WORDS), int(lengths.sum()))].tolist()
    ends = np.cumsum(lengths).tolist()
    return [" ".join(words[end - n:end]) for n, end in zip(lengths.tolist(), ends)]


def chunk(first_row: int, rows: int, seed: int = 0) -> pa.Table:
    """Rows [first_row, first_row + rows) of the synthetic input (query_id, query, doc_id, text)."""
    rng = np.random.default_rng([seed, first_row])
    index = np.arange(first_row, first_row + rows)
    query_ids = [f"q{q}" for q in (index // PER_QUERY).tolist()]
    queries = _texts(rng, rows, 2, 5)
    # One query text per query id: the first candidate's draw stands for all of its rows.
    starts = np.flatnonzero(np.r_[True, (index[1:] // PER_QUERY) != (index[:-1] // PER_QUERY)])
    owner = np.repeat(starts, np.diff(np.r_[starts, rows]))
    queries = [queries[i] for i in owner.tolist()]
    return pa.table({"query_id": query_ids, "query": queries, "doc_id": [f"d{i}" for i in index.tolist()],
                     "text": _texts(rng, rows, 8, 24)})


def write(folder: Path, rows: int, rows_per_file: int = 1_000_000, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, first in enumerate(range(0, rows, rows_per_file)):
        path = folder / f"part-{number:05d}.parquet"
        pq.write_table(chunk(first, min(rows_per_file, rows - first), seed), path, row_group_size=100_000)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="folder to write part-NNNNN.parquet files into")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--rows-per-file", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    paths = write(args.output, args.rows, args.rows_per_file, args.seed)
    size = sum(p.stat().st_size for p in paths)
    print(f"wrote {args.rows:,} rows in {len(paths)} file(s), {size / 2**20:,.0f} MiB, to {args.output} "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
