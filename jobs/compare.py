"""`rayrank compare`: several rerankers on the same candidates — quality, speed and how much they agree.

Each model scores every pair with the batch job (`rayrank.jobs.rerank.run`, Ray Data actors); the outputs
are evaluated against qrels (nDCG@10, MRR@10) and compared pairwise (Kendall τ, top-3/top-5 overlap).

Usage: `rayrank compare CANDIDATES --qrels QRELS --model cross-encoder:DIR --model late-interaction:ID`
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from typing import Any

from rayrank.cli import command
from rayrank.config import ClusterConfig, EngineConfig, RerankJobConfig, parse_config
from rayrank.evaluate import Run, evaluate, load_qrels, read_run
from rayrank.lab.agreement import agreement
from rayrank.lab.config import ModelSpec


def score_with_job(candidates: str, engine: EngineConfig, output: str, cluster: ClusterConfig,
                   index: str | None = None) -> tuple[Run, dict]:
    """Score every pair of `candidates` with the batch rerank job (a late-interaction engine reads documents
    from `index` when given); return (query → doc → score, manifest)."""

    from rayrank.jobs.rerank import run

    config = parse_config(RerankJobConfig, {"input": candidates, "output": output, "engine": engine.model_dump(),
                                            "cluster": cluster.model_dump(), "index": index}, "rayrank lab")
    manifest = run(config)
    return read_run(output), manifest


def model_output(workdir: str, i: int) -> str:
    """Where `compare` has the rerank job write the scores of its `i`-th model (0-based)."""
    return f"{workdir}/model-{i}"


def compare(candidates: str, qrels_path: str, specs: list[ModelSpec], engine: dict[str, Any],
            cluster: ClusterConfig, workdir: str, baseline_column: str | None = None,
            index: str | None = None) -> dict[str, Any]:
    """Score with each model, evaluate, and compute pairwise agreement (baseline column included);
    late-interaction models read documents from `index` when given (a `rayrank index` of their model)."""
    qrels = load_qrels(qrels_path)
    runs: dict[str, Run] = {}
    rows = []
    if baseline_column:
        runs[baseline_column] = read_run(candidates, baseline_column)
        m = evaluate(runs[baseline_column], qrels)
        rows.append({"label": baseline_column, "name": baseline_column, "scorer": "column", "ndcg_at_10": m.ndcg_at_10,
                     "mrr_at_10": m.mrr_at_10, "queries": m.queries, "pairs_per_s": None})
    for i, spec in enumerate(specs):
        settings = EngineConfig(**{**engine, "model": spec.model, "scorer": spec.scorer})
        run, manifest = score_with_job(candidates, settings, model_output(workdir, i), cluster,
                                       index if spec.scorer == "late-interaction" else None)
        label = f"[{i + 1}] {spec.label}"  # numbered: the same model may be listed twice
        runs[label] = run
        m = evaluate(run, qrels)
        rows.append({"label": label, "name": spec.model, "scorer": spec.scorer, "backend": settings.backend,
                     "ndcg_at_10": m.ndcg_at_10, "mrr_at_10": m.mrr_at_10, "queries": m.queries,
                     "pairs": manifest["counts"]["rows_scored"],
                     "pairs_per_s": manifest["timings"]["steady_pairs_per_s"],
                     "elapsed_s": manifest["timings"]["elapsed_s"]})
    pairs = [{"a": a, "b": b, **agreement(runs[a], runs[b])} for a, b in itertools.combinations(runs, 2)]
    return {"candidates": candidates, "qrels": qrels_path, "models": rows, "agreement": pairs}


def _short(label: str) -> str:
    """`[2] /long/path/model (scorer)` → `[2] model (scorer)`."""
    number, _, rest = label.partition("] ")
    return f"{number}] {rest.rsplit('/', 1)[-1]}" if rest else label.rsplit("/", 1)[-1]


def _number(label: str) -> str:
    """`[2] /long/path/model (scorer)` → `[2]`; a baseline column keeps its name."""
    return label.partition(" ")[0] if label.startswith("[") else label


def table(result: dict[str, Any]) -> str:
    lines = [f"{'model':58} {'nDCG@10':>8} {'MRR@10':>8} {'pairs/s':>9}"]
    for r in result["models"]:
        rate = f"{r['pairs_per_s']:9.1f}" if r["pairs_per_s"] else f"{'-':>9}"
        lines.append(f"{_short(r['label'])[-58:]:58} {r['ndcg_at_10']:8.4f} "
                     f"{r['mrr_at_10']:8.4f} {rate}")
    lines += ["", f"{'agreement':58} {'tau':>8} {'top-3':>8} {'top-5':>9}"]
    for p in result["agreement"]:
        name = f"{_number(p['a'])}  vs  {_number(p['b'])}"  # the models by their number in the table above
        lines.append(f"{name[-58:]:58} {p['kendall_tau']:8.3f} {p['top3_overlap']:8.3f} {p['top5_overlap']:9.3f}")
    lines.append("pairs/s: the batch job's steady rate once actors were up (rerank manifest `steady_pairs_per_s`).")
    return "\n".join(lines)


@command("compare")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rayrank compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("candidates", help="long query-candidate Parquet (query_id, query, doc_id, text)")
    parser.add_argument("--qrels", required=True, help="TREC qrels")
    parser.add_argument("--model", action="append", required=True, metavar="[SCORER:]MODEL",
                        help="repeat per model; SCORER is cross-encoder (default) or late-interaction")
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                        help="every model's backend (default: %(default)s)")
    parser.add_argument("--max-tokens-per-batch", type=int, help="token budget of a batch, padding counted "
                        f"(default {EngineConfig.model_fields['max_tokens_per_batch'].default})")
    parser.add_argument("--baseline-column", help="also rank by this column, e.g. bm25_rank (lower is better)")
    parser.add_argument("--actors", default="1,1", help="MIN,MAX scoring actors per model (default: %(default)s)")
    parser.add_argument("--address", help="Ray address; default starts a local Ray")
    parser.add_argument("--keep", metavar="DIR", help="keep each model's rerank output under DIR")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)

    engine = {"backend": args.backend}
    if args.max_tokens_per_batch:
        engine["max_tokens_per_batch"] = args.max_tokens_per_batch
    cluster = parse_config(ClusterConfig, {"address": args.address, "actors": args.actors}, "command-line flags")
    with tempfile.TemporaryDirectory(prefix="rayrank-compare-") as scratch:
        result = compare(args.candidates, args.qrels, [ModelSpec.parse(m) for m in args.model], engine,
                         cluster, args.keep or scratch, args.baseline_column)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
