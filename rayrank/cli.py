"""`rayrank` console script: one subcommand per job; each lives in its own module with `main(argv) -> int`.

Subcommands are imported only when called, so `rayrank eval` never pays for importing Ray. Every
subcommand's `main` is wrapped by `command`, the one place where rayrank's errors meet the terminal.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable

from rayrank.errors import RayrankError, StorageError

COMMANDS: dict[str, tuple[str, str]] = {
    "rerank": ("rayrank.jobs.rerank", "rerank a Parquet query-candidate table on Ray Data"),
    "index": ("rayrank.jobs.index", "build a late-interaction index (token embeddings) of a corpus on Ray Data"),
    "search": ("rayrank.jobs.search", "top-k documents per query over a late-interaction index"),
    "dense-index": ("rayrank.jobs.dense_index", "build a dense (single-vector bi-encoder) index of a corpus on Ray Data"),
    "funnel": ("rayrank.jobs.funnel", "retrieval funnel (BM25, dense, late interaction, fusion, rerank, LLM) on Ray Data"),
    "eval": ("rayrank.evaluate", "nDCG@10, MRR@10, Recall@10/100 of a run against TREC qrels"),
    "export": ("rayrank.jobs.export", "write a rerank OUTPUT as a TREC run file (--top-n, --tag)"),
    "compare": ("rayrank.jobs.compare", "several rerankers on the same candidates: quality, pairs/s, agreement"),
    "sweep": ("rayrank.jobs.sweep", "pairs/s of one model over batch sizes × token budgets, with a PNG plot"),
    "finetune": ("rayrank.jobs.finetune", "train a cross-encoder (BCE, MSE on teacher scores, pairwise margin)"),
    "distill": ("rayrank.jobs.distill", "a teacher labels pairs with the batch job; a student learns its scores"),
    "distractors": ("rayrank.lab.distractors", "relevant vs hardest distractor: pass rate and margin per model"),
    "serve": ("rayrank.ray_app.cli", "run the online reranking API (Ray Serve) from a Serve config file"),
    "loadtest": ("rayrank.loadtest", "open-loop HTTP load test of a rerank endpoint: latency percentiles per QPS"),
    "check": ("rayrank.check", "load a model as the job and server would; its family, prompt and each backend's |Δ|"),
}

# How `rayrank --help` lists the commands: the product first, then the lab.
GROUPS: dict[str, tuple[str, ...]] = {
    "batch jobs (Ray Data)": ("rerank", "index", "search", "dense-index", "funnel"),
    "serving (Ray Serve)": ("serve", "loadtest"),
    "tools": ("check", "eval", "export"),
    "model lab": ("compare", "sweep", "finetune", "distill", "distractors"),
}


Main = Callable[[list[str] | None], int]


def command(name: str) -> Callable[[Main], Main]:
    """Decorate a subcommand's `main(argv) -> int`: any RayrankError, raised here or in a Ray actor or task,
    prints as `rayrank NAME: error: MESSAGE` and exits 2; so does a path the user named that does not exist."""

    def decorate(main: Main) -> Main:
        @functools.wraps(main)
        def wrapped(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except FileNotFoundError as exc:  # ours are RayrankErrors; the OS's name the path too
                print(f"rayrank {name}: error: {exc}", file=sys.stderr)
                return 2
            except Exception as exc:
                if (cause := rayrank_cause(exc)) is None:
                    raise
                # A storage fault in a worker left committed work behind: the same command resumes.
                remote_storage = cause is not exc and isinstance(cause, StorageError)
                hint = " (rerun the same command to resume)" if remote_storage else ""
                print(f"rayrank {name}: error: {cause}{hint}", file=sys.stderr)
                return 2

        return wrapped

    return decorate


def rayrank_cause(exc: BaseException) -> RayrankError | None:
    """`exc` if it is one of ours, else the RayrankError behind it: Ray wraps errors raised in actors and
    tasks, passing the cause on as an attribute, a chained exception, or only as traceback text."""
    kinds = {k.__name__: k for k in _subclasses(RayrankError)}
    pending, seen = [exc], set()
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        if isinstance(exc, RayrankError) and type(exc).__module__.startswith("rayrank."):
            return exc
        seen.add(id(exc))
        pending += [exc.__cause__, exc.__context__, getattr(exc, "cause", None)]  # RayTaskError.cause
        for line in reversed(str(exc).splitlines()):
            for kind_name, kind in kinds.items():
                if (at := line.find(f"{kind_name}: ")) >= 0 and (at == 0 or not line[at - 1].isalnum()):
                    return kind(line[at + len(kind_name) + 2:].strip())
    return None


def _subclasses(kind: type) -> list[type]:
    return [kind] + [s for sub in kind.__subclasses__() for s in _subclasses(sub)]


def usage() -> str:
    lines = ["usage: rayrank COMMAND [ARGS...]"]
    for group, names in GROUPS.items():
        lines += ["", f"{group}:"] + [f"  {name:<12} {COMMANDS[name][1]}" for name in names]
    lines += ["", "rayrank COMMAND --help shows a command's options and their defaults."]
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
