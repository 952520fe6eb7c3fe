"""`rayrank sweep`: time one model over batch sizes 8/16/32/64 × token budgets on the same pairs.

Prints pairs/s per setting and the best, and writes a PNG plot. The timing runs in this process on
the first `--rows` pairs of CANDIDATES (one engine, no Ray), so settings differ only in batching.

Usage: `rayrank sweep CANDIDATES --model MODEL [--scorer late-interaction] [--plot sweep.png]`
"""

from __future__ import annotations

import argparse
import json
import sys

from rayrank.cli import command
from rayrank.lab.data import read_table
from rayrank.lab.sweep import BATCH_SIZES, TOKEN_BUDGETS, best, plot, sweep


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 8,16,32, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"values must be positive, got {text!r}")
    return values


@command("sweep")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rayrank sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("candidates", help="long query-candidate Parquet (query, text)")
    parser.add_argument("--model", required=True, help="a Hugging Face id or a local directory")
    parser.add_argument("--scorer", choices=["cross-encoder", "late-interaction"], default="cross-encoder",
                        help="how the model scores (default: %(default)s)")
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch", help="(default: %(default)s)")
    parser.add_argument("--batch-sizes", type=_ints, default=list(BATCH_SIZES),
                        help="comma-separated pairs per batch to try (default: %(default)s)")
    parser.add_argument("--token-budgets", type=_ints, default=list(TOKEN_BUDGETS),
                        help="comma-separated max tokens per batch to try (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=512, help="time on the first ROWS pairs (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="best of N timed runs per setting (default: %(default)s)")
    parser.add_argument("--plot", default="sweep.png", help="PNG to write (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    table = read_table(args.candidates, ["query", "text"], "candidates").slice(0, args.rows)
    rows = sweep(args.model, args.scorer, table["query"].to_pylist(), table["text"].to_pylist(),
                 args.batch_sizes, args.token_budgets, args.repeats, backend=args.backend)
    top = best(rows)
    path = plot(rows, args.plot, f"{args.model} ({args.scorer}, {args.backend}), {table.num_rows} pairs")
    if args.json:
        print(json.dumps({"rows": rows, "best": top, "plot": str(path), "pairs": table.num_rows}, indent=2))
        return 0
    print(f"{'batch':>6} {'tokens/batch':>13} {'seconds':>9} {'pairs/s':>9}")
    for r in rows:
        print(f"{r['batch_size']:6d} {r['max_tokens_per_batch']:13d} {r['seconds']:9.3f} {r['pairs_per_s']:9.1f}")
    print(f"best: engine max_batch_size {top['batch_size']}, max_tokens_per_batch {top['max_tokens_per_batch']} "
          f"→ {top['pairs_per_s']:,.1f} pairs/s on {table.num_rows} pairs; plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
