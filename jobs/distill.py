"""`rayrank distill`: a teacher labels pairs with the batch rerank job; a student learns its scores.

Students: `cross-encoder` (MSE on per-query standardised teacher scores, via `rayrank finetune`'s
training path, so `--workers N` trains on Ray Train) or `late-interaction`, the bi-encoder student
(Margin-MSE on MaxSim; trains in-process).

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

from jobs.compare import ModelSpec, score_with_job
from jobs.finetune import SUMMARY, add_training_flags, merge_training_flags, prepare_output, report
from jobs.finetune import run as finetune
from rayrank.config import ConfigError, load_yaml, parse_config
from rayrank.errors import InvalidInputError, ModelUnavailableError
from rayrank.io.tables import InputSchemaError
from rayrank.lab import data
from rayrank.lab.config import DistillConfig, FinetuneConfig
from rayrank.lab.distill import margin_triples, standardize_per_query, train_late_interaction


def parse_args(argv: list[str] | None) -> DistillConfig:
    parser = argparse.ArgumentParser(prog="rayrank distill", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", help="directory for the student model")
    parser.add_argument("--teacher", metavar="[SCORER:]MODEL",
                        help="e.g. late-interaction:sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--teacher-actors", help="MIN,MAX scoring actors for the teacher's rerank job")
    parser.add_argument("--student-kind", choices=["cross-encoder", "late-interaction"])
    parser.add_argument("--candidates", help="pairs to label: long query-candidate Parquet")
    parser.add_argument("--queries", help="pairs to label: BM25 top --depth of the corpus for these queries")
    parser.add_argument("--corpus")
    parser.add_argument("--depth", type=int)
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
    for key in ("student_kind", "labels"):
        if getattr(args, key):
            data_[key] = getattr(args, key)
    source = {k: getattr(args, k) for k in ("candidates", "queries", "corpus", "depth") if getattr(args, k)}
    if source:
        data_["data"] = {**(data_.get("data") or {}), **source}
    config = parse_config(DistillConfig, data_, args.config or "command-line flags")
    if not config.output:
        parser.error("OUTPUT is required (as an argument or `output:` in --config)")
    return config


def pairs_table(config: DistillConfig, folder: Path) -> str:
    """The pairs to label as a long Parquet file (query_id, query, doc_id, text)."""
    if config.data.candidates:
        return config.data.candidates
    queries, corpus = data.read_queries(config.data.queries), data.read_corpus(config.data.corpus)
    ranked = data.ranked_from_bm25(queries, corpus, config.data.depth)
    rows = [{"query_id": q, "query": queries[q], "doc_id": d, "text": corpus[d]} for q, docs in ranked.items()
            for d in docs]
    path = folder / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def teacher_labels(config: DistillConfig, folder: Path) -> pa.Table:
    """query_id, query, doc_id, text, teacher_score: every pair scored by the teacher's rerank job."""
    if config.labels and Path(config.labels).is_file():
        return data.read_table(config.labels, ["query_id", "query", "doc_id", "text", "teacher_score"], "labels")
    path = pairs_table(config, folder)
    run, _ = score_with_job(path, config.teacher, str(folder / "teacher"), config.teacher_cluster)
    table = data.read_table(path, ["query_id", "query", "doc_id", "text"], "candidates")
    table = table.select(["query_id", "query", "doc_id", "text"])
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
        target = standardize_per_query(qids, labels["teacher_score"].to_numpy()).tolist()
        queries, texts = labels["query"].to_pylist(), labels["text"].to_pylist()
        teacher = {"teacher": config.teacher.model_name, "teacher_scorer": config.teacher.scorer,
                   "pairs_labelled": labels.num_rows}
        if config.student_kind == "cross-encoder":
            pairs = folder / "student-pairs.parquet"
            pq.write_table(pa.table({"query": queries, "text": texts, "score": target}), pairs)
            student = FinetuneConfig(model=config.student, output=config.output, loss="mse",
                                     data={"pairs": str(pairs)}, train=config.train, cluster=config.cluster,
                                     overwrite=config.overwrite)
            summary = finetune(student)
        else:
            if config.cluster.workers > 1:
                raise ConfigError("cluster.workers: the late-interaction student trains in-process; use 1 worker.")
            out = prepare_output(config.output, config.overwrite)
            triples = margin_triples(qids, queries, texts, target, seed=config.train.seed)
            summary = {"output": str(out), "model": config.student, "loss": "maxsim-margin-mse", "workers": 1,
                       **train_late_interaction(config.student, triples, out, config.train)}
        summary = {**summary, **teacher, "student_kind": config.student_kind, "config": config.model_dump()}
        (Path(config.output) / SUMMARY).write_text(json.dumps(summary, indent=2))
        return summary


def main(argv: list[str] | None = None) -> int:
    try:
        summary = run(parse_args(argv))
    except (ConfigError, InvalidInputError, InputSchemaError, FileExistsError, FileNotFoundError,
            ModelUnavailableError) as exc:
        print(f"rayrank distill: error: {exc}", file=sys.stderr)
        return 2
    print(f"teacher        {summary['teacher']} ({summary['teacher_scorer']}) labelled "
          f"{summary['pairs_labelled']:,} pairs with the rerank job")
    print(report(summary, f"rayrank distill ({summary['student_kind']} student)", summary["student_kind"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
