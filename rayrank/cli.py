"""`rayrank` console script: one subcommand per job; each lives in its own module with `main(argv) -> int`.

Subcommands are imported only when called, so `rayrank eval` never pays for importing Ray.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "rerank": ("rayrank.jobs.rerank", "rerank a Parquet query-candidate table on Ray Data"),
    "index": ("rayrank.jobs.index", "build a late-interaction index (token embeddings) of a corpus on Ray Data"),
    "search": ("rayrank.jobs.search", "top-k documents per query over a late-interaction index"),
    "dense-index": ("rayrank.jobs.dense_index", "build a dense (single-vector bi-encoder) index of a corpus on Ray Data"),
    "funnel": ("rayrank.jobs.funnel", "retrieval funnel (BM25, dense, late interaction, fusion, rerank, LLM) on Ray Data"),
    "eval": ("rayrank.evaluate", "nDCG@10, MRR@10, Recall@10/100 of a run against TREC qrels"),
    "compare": ("rayrank.jobs.compare", "several rerankers on the same candidates: quality, pairs/s, agreement"),
    "sweep": ("rayrank.jobs.sweep", "pairs/s of one model over batch sizes × token budgets, with a PNG plot"),
    "finetune": ("rayrank.jobs.finetune", "train a cross-encoder (BCE, MSE on teacher scores, pairwise margin)"),
    "distill": ("rayrank.jobs.distill", "a teacher labels pairs with the batch job; a student learns its scores"),
    "distractors": ("rayrank.lab.distractors", "relevant vs hardest distractor: pass rate and margin per model"),
    "serve": ("rayrank.ray_app.cli", "run the online reranking API (Ray Serve) from a Serve config file"),
    "loadtest": ("rayrank.loadtest", "open-loop HTTP load test of a rerank endpoint: latency percentiles per QPS"),
}


def usage() -> str:
    lines = ["usage: rayrank COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "rayrank COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rayrank: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
