"""`rayrank distill`: a teacher labels pairs with the batch rerank job; a student learns its scores.

The target is the teacher's per-query z-score, optionally fused with pairs columns (`--blend
bm25_score=0.3`) and lifted on judged pairs (`--qrels`). Students: `cross-encoder` (`--loss mse` or
`listwise`, via `rayrank finetune`'s training path, so `--workers N` trains on Ray Train),
`late-interaction`, the bi-encoder student (Margin-MSE on MaxSim; trains in-process), or `dense`, the
funnel's single-vector stage model (`--loss mse`: CosineSimilarityLoss; `margin-mse`; in-process).

Usage: `rayrank distill OUTPUT --teacher late-interaction:sentence-transformers/all-MiniLM-L6-v2
--candidates CANDIDATES.parquet --student sentence-transformers/all-MiniLM-L6-v2`
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rayrank.cli import command
from rayrank.config import ConfigError, load_yaml, parse_config
from rayrank.evaluate import load_qrels
from rayrank.funnel.bm25 import BM25
from rayrank.jobs.compare import score_with_job
from rayrank.jobs.finetune import SUMMARY, add_training_flags, merge_training_flags, prepare_output, report
from rayrank.jobs.finetune import run as finetune
from rayrank.lab import data
from rayrank.lab.config import DistillConfig, FinetuneConfig, ModelSpec, PairSourceConfig
from rayrank.lab.distill import dense_pairs, margin_triples, teacher_targets, train_dense, train_late_interaction


def parse_args(argv: list[str] | None) -> DistillConfig:
    parser = argparse.ArgumentParser(prog="rayrank distill", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", help="directory for the student model")
    parser.add_argument("--teacher", metavar="[SCORER:]MODEL",
                        help="e.g. late-interaction:sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--teacher-actors", help="MIN,MAX scoring actors for the teacher's rerank job")
    parser.add_argument("--teacher-index", help="a late-interaction teacher reads documents from this rayrank index")
    parser.add_argument("--student-kind", choices=["cross-encoder", "late-interaction", "dense"],
                        help=f"what the student is (default {DistillConfig.model_fields['student_kind'].default})")
    parser.add_argument("--loss", choices=["mse", "listwise", "margin-mse"],
                        help="cross-encoder: mse or listwise; dense: mse (cosine) or margin-mse (default mse)")
    parser.add_argument("--blend", action="append", metavar="COLUMN=WEIGHT",
                        help="fuse a numeric pairs column into the target, e.g. bm25_score=0.3 (repeatable)")
    parser.add_argument("--qrels", help="judged-relevant pairs get +gold_weight on the target")
    parser.add_argument("--candidates", help="pairs to label: long query-candidate Parquet")
    parser.add_argument("--queries", help="pairs to label: BM25 top --depth of the corpus for these queries")
    parser.add_argument("--corpus", help="pairs to label: Parquet doc_id, [title,] text, searched by BM25 for "
                        "--queries")
    parser.add_argument("--depth", type=int, help="pairs to label: BM25's top N per query (default "
                        f"{PairSourceConfig.model_fields['depth'].default})")
    parser.add_argument("--labels", help="keep the teacher's scores in this Parquet file; reused if it exists")
    add_training_flags(parser)
    args = parser.parse_args(argv)
    data_ = load_yaml(args.config) if args.config else {}
    data_ = merge_training_flags(data_, args)
    if "model" in data_:  # --model is the student's warm start, as in finetune
        data_["student"] = data_.pop("model")
    if args.teacher:
        spec = ModelSpec.parse(args.teacher)
        data_["teacher"] = {**data_.get("teacher", {}), "model": spec.model, "scorer": spec.scorer}
    if args.teacher_actors:
        data_["teacher_cluster"] = {**data_.get("teacher_cluster", {}), "actors": args.teacher_actors}
    if args.blend:
        data_["blend"] = {**data_.get("blend", {}), **dict(parse_blend(b) for b in args.blend)}
    for key in ("student_kind", "labels", "teacher_index", "loss", "qrels"):
        if getattr(args, key):
            data_[key] = getattr(args, key)
    source = {k: getattr(args, k) for k in ("candidates", "queries", "corpus", "depth") if getattr(args, k)}
    if source:
        data_["data"] = {**(data_.get("data") or {}), **source}
    config = parse_config(DistillConfig, data_, args.config or "command-line flags")
    if not config.output:
        parser.error("OUTPUT is required (as an argument or `output:` in --config)")
    return config


def parse_blend(flag: str) -> tuple[str, float]:
    column, _, weight = flag.partition("=")
    try:
        return column, float(weight)
    except ValueError:
        raise ConfigError(f"--blend {flag!r}: expected COLUMN=WEIGHT, e.g. bm25_score=0.3") from None


def pairs_table(config: DistillConfig, folder: Path) -> str:
    """The pairs to label as a long Parquet file: the candidates table, or BM25's top `depth` over the
    corpus per query (query_id, query, doc_id, text, bm25_rank, bm25_score)."""
    if config.data.candidates:
        return config.data.candidates
    queries, corpus = data.read_queries(config.data.queries), data.read_corpus(config.data.corpus)
    doc_ids = list(corpus)
    hits = BM25([corpus[d] for d in doc_ids]).search_scored(list(queries.values()), config.data.depth)
    rows = [{"query_id": q, "query": queries[q], "doc_id": doc_ids[i], "text": corpus[doc_ids[i]], "bm25_rank": r + 1,
             "bm25_score": float(score)}
            for q, (top, scores) in zip(queries, hits) for r, (i, score) in enumerate(zip(top, scores))]
    path = folder / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def teacher_labels(config: DistillConfig, folder: Path) -> pa.Table:
    """query_id, query, doc_id, text, the `blend` columns, teacher_score: every pair scored by the teacher's
    rerank job."""
    columns = ["query_id", "query", "doc_id", "text", *config.blend]
    if config.labels and Path(config.labels).is_file():
        return data.read_table(config.labels, [*columns, "teacher_score"], "labels")
    path = pairs_table(config, folder)
    table = data.read_table(path, columns, "candidates").select(columns)
    run, _ = score_with_job(path, config.teacher, str(folder / "teacher"), config.teacher_cluster,
                            config.teacher_index)
    keys = zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist())
    scores = [run.get(str(q), {}).get(str(d)) for q, d in keys]
    table = table.append_column("teacher_score", pa.array(scores, pa.float32())).filter(
        pa.array([s is not None for s in scores]))  # rows the job rejected are in its _errors table
    if config.labels:
        Path(config.labels).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, config.labels)
    return table


def run(config: DistillConfig) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rayrank-distill-") as scratch:
        folder = Path(scratch)
        labels = teacher_labels(config, folder)
        qids = [str(q) for q in labels["query_id"].to_pylist()]
        relevant = None
        if config.qrels:
            qrels = load_qrels(config.qrels)
            relevant = [qrels.get(q, {}).get(str(d), 0) > 0 for q, d in zip(qids, labels["doc_id"].to_pylist())]
        blend = {c: (w, labels[c].to_numpy()) for c, w in config.blend.items()}
        target = teacher_targets(qids, labels["teacher_score"].to_numpy(), blend, relevant,
                                 config.gold_weight).tolist()
        queries, texts = labels["query"].to_pylist(), labels["text"].to_pylist()
        teacher = {"teacher": config.teacher.model_name, "teacher_scorer": config.teacher.scorer,
                   "pairs_labelled": labels.num_rows, "blend": config.blend,
                   "relevant_pairs": sum(relevant) if relevant is not None else None}
        if config.student_kind == "cross-encoder":
            pairs = folder / "student-pairs.parquet"
            pq.write_table(pa.table({"query_id": qids, "query": queries, "text": texts, "score": target}), pairs)
            student = FinetuneConfig(model=config.student, output=config.output, loss=config.loss,
                                     data={"pairs": str(pairs)}, train=config.train, cluster=config.cluster,
                                     overwrite=config.overwrite)
            summary = finetune(student)
        else:
            if config.cluster.workers > 1:
                raise ConfigError(f"cluster.workers: the {config.student_kind} student trains in-process; "
                                  "use 1 worker.")
            out = prepare_output(config.output, config.overwrite)
            if config.student_kind == "dense":
                columns = (margin_triples(qids, queries, texts, target, seed=config.train.seed)
                           if config.loss == "margin-mse" else dense_pairs(queries, texts, target))
                trained = train_dense(config.student, columns, out, config.train, config.loss)
                loss = "margin-mse" if config.loss == "margin-mse" else "cosine-mse"
            else:
                triples = margin_triples(qids, queries, texts, target, seed=config.train.seed)
                trained, loss = train_late_interaction(config.student, triples, out, config.train), "maxsim-margin-mse"
            summary = {"output": str(out), "model": config.student, "loss": loss, "workers": 1, **trained}
        summary = {**summary, **teacher, "student_kind": config.student_kind, "config": config.model_dump()}
        (Path(config.output) / SUMMARY).write_text(json.dumps(summary, indent=2))
        return summary


@command("distill")
def main(argv: list[str] | None = None) -> int:
    summary = run(parse_args(argv))
    print(f"teacher        {summary['teacher']} ({summary['teacher_scorer']}) labelled "
          f"{summary['pairs_labelled']:,} pairs with the rerank job")
    text = report(summary, f"rayrank distill ({summary['student_kind']} student)", summary["student_kind"])
    if summary["student_kind"] == "dense":  # not a Reranker: the funnel's dense stage loads it
        text = text.rsplit("\n", 1)[0] + f"\n  use it as      a funnel `dense` stage's model: {summary['output']}"
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
