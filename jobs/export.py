"""`rayrank export`: a rerank OUTPUT (its part files, local or s3://) as one TREC run file.

No Ray: it reads the job's Parquet output and writes `qid Q0 docid rank score tag` lines, ranked by
score (ties by doc id, as the job's `rank` column), to a file (published whole) or to stdout.
"""

from __future__ import annotations

import argparse
import sys

from rayrank.cli import command
from rayrank.evaluate import read_output_table
from rayrank.io.storage import storage_options
from rayrank.io.trec import run_lines, write_run


@command("export")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rayrank export", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="a rerank OUTPUT directory (or any Parquet with query_id, doc_id, score)")
    parser.add_argument("--format", choices=["trec"], default="trec", help="run file format")
    parser.add_argument("--top-n", type=int, help="keep the N best documents per query (default: all)")
    parser.add_argument("--tag", default="rayrank", help="the run's name in its last column (one word)")
    parser.add_argument("--out", default="-", help="run file to write (local or s3://); '-' writes to stdout")
    args = parser.parse_args(argv)
    if args.top_n is not None and args.top_n < 1:
        parser.error(f"--top-n must be a positive integer, got {args.top_n}")

    table = read_output_table(args.output, ["query_id", "doc_id", "score"],
                              storage_options(None, args.output))
    if args.out == "-":
        sys.stdout.writelines(run_lines(table, args.tag, args.top_n))
        return 0
    lines = write_run(table, args.out, args.tag, args.top_n, storage_options(None, args.out))
    print(f"rayrank export: wrote {lines:,} lines for {len(set(table['query_id'].to_pylist())):,} queries "
          f"to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
