"""`rayrank eval`: ranking quality of a run against TREC qrels, the way trec_eval counts it.

Conventions: nDCG uses the grade as gain (trec_eval `ndcg_cut`); MRR and recall count a document
as relevant when its grade ≥ `min_relevance` (1 by default, `--min-relevance 2` for TREC-DL
passage conventions); run queries with no judgments are skipped and counted; judged queries
missing from the run are counted too. The run is a rerank output (Parquet) or a TREC run file.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rayrank.cli import command
from rayrank.errors import InvalidInputError

Run = Mapping[str, Mapping[str, float]]  # query_id -> doc_id -> score (higher is better)
Qrels = Mapping[str, Mapping[str, int]]  # query_id -> doc_id -> grade


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read TREC qrels lines `query_id 0 doc_id grade`."""
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4 or not parts[3].lstrip("-").isdigit():
            raise InvalidInputError(f"{path}:{number}: expected 'query_id 0 doc_id grade' (an integer grade), "
                                    f"got {line!r}")
        qrels.setdefault(parts[0], {})[parts[2]] = int(parts[3])
    return qrels


@dataclass
class Metrics:
    """Mean metrics over evaluated queries, and what was left out."""

    ndcg_at_10: float
    mrr_at_10: float
    recall_at_10: float
    recall_at_100: float
    queries: int
    skipped_unjudged: int = 0
    missing_from_run: int = 0
    per_query: dict[str, float] = field(default_factory=dict, repr=False)


def _dcg(gains: list[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def evaluate(run: Run, qrels: Qrels, min_relevance: int = 1) -> Metrics:
    """Score a run. Ties in score are broken by doc_id, descending, as trec_eval does."""
    sums = {"ndcg": 0.0, "mrr": 0.0, "r10": 0.0, "r100": 0.0}
    per_query: dict[str, float] = {}
    evaluated = skipped = 0
    for qid, scores in run.items():
        judged = qrels.get(qid)
        if not judged:
            skipped += 1
            continue
        ranking = [d for d, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]
        ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:10]
        idcg = _dcg(ideal)
        ndcg = _dcg([max(judged.get(d, 0), 0) for d in ranking[:10]]) / idcg if idcg else 0.0
        relevant = {d for d, g in judged.items() if g >= min_relevance}
        first = next((i for i, d in enumerate(ranking[:10]) if d in relevant), None)
        sums["ndcg"] += ndcg
        sums["mrr"] += 0.0 if first is None else 1.0 / (first + 1)
        if relevant:
            sums["r10"] += len(relevant.intersection(ranking[:10])) / len(relevant)
            sums["r100"] += len(relevant.intersection(ranking[:100])) / len(relevant)
        per_query[qid] = ndcg
        evaluated += 1
    n = max(evaluated, 1)
    return Metrics(ndcg_at_10=sums["ndcg"] / n, mrr_at_10=sums["mrr"] / n, recall_at_10=sums["r10"] / n,
                   recall_at_100=sums["r100"] / n, queries=evaluated, skipped_unjudged=skipped,
                   missing_from_run=sum(1 for q in qrels if q not in run), per_query=per_query)


def read_run(path: str, column: str = "score", storage_options: dict | None = None) -> dict[str, dict[str, float]]:
    """Read a run into query → doc → score: a rerank output (Parquet file or dataset) or a TREC run file.

    Parquet is a directory or a file starting with Parquet's magic bytes; any other file is read as a
    TREC run (`qid Q0 docid rank score tag`, its score column; a malformed line is refused with its
    number). A Parquet column whose name contains "rank" (e.g. `bm25_rank`) is read as a rank: lower is better.
    """
    import pyarrow.compute as pc

    from rayrank.io.storage import filesystem
    from rayrank.io.trec import is_parquet
    from rayrank.io.trec import read_run as read_trec_run

    fs, root = filesystem(path, storage_options)
    if not fs.exists(root):
        raise InvalidInputError(f"run {path} does not exist.")
    if not is_parquet(path, storage_options):
        if column != "score":
            raise InvalidInputError(f"run {path} is a TREC run file, which has no column {column!r}; "
                                    "--baseline-column needs a Parquet run")
        table = read_trec_run(path, storage_options)
        pairs = table.group_by(["query_id", "doc_id"]).aggregate([("_line", "min"), ("_line", "count")])
        if (twice := pairs.filter(pc.greater(pairs["_line_count"], 1))).num_rows:
            first = twice.sort_by("_line_min").slice(0, 1).to_pylist()[0]
            raise InvalidInputError(f"run {path} ranks document {first['doc_id']!r} more than once for query "
                                    f"{first['query_id']!r} (first at line {first['_line_min']}); a run holds each "
                                    "(query, document) once, as trec_eval requires")
        column = "first_score"
    else:
        table = read_output_table(path, ["query_id", "doc_id", column], storage_options)
    sign = -1.0 if "rank" in column else 1.0
    run: dict[str, dict[str, float]] = {}
    for qid, did, value in zip(*(table[c].to_pylist() for c in ("query_id", "doc_id", column))):
        if value is not None:
            run.setdefault(str(qid), {})[str(did)] = sign * float(value)
    return run


def read_output_table(path: str, columns: list[str], storage_options: dict | None = None):
    """`columns` of a rerank output: its top-level part files (a funnel's stages/NAME/ are runs of their own),
    or any other Parquet file or dataset read whole; _errors/, _staging/ and _manifest.json are skipped.

    Where the manifest names the output's files (a partition published on an object store), those are the
    output, whatever else the folder holds for a moment; if a publish removes them while they are read, the
    new manifest is followed (up to 3 times).
    """
    import pyarrow.dataset as ds

    from rayrank.io.storage import filesystem

    fs, root = filesystem(path, storage_options)
    if not fs.exists(root):
        raise InvalidInputError(f"run {path} does not exist.")
    for attempt in range(3):
        parts = _result_files(fs, root) if fs.isdir(root) else []
        try:
            dataset = ds.dataset(parts or root, filesystem=fs, format="parquet")
            if not dataset.files:
                raise InvalidInputError(f"run {path} holds no result files (part-*.parquet): the job has not "
                                        "finished (rerun the same `rayrank rerank` command to resume it).")
            missing = [c for c in columns if c not in dataset.schema.names]
            if missing:
                raise InvalidInputError(f"run {path} has no column {', '.join(map(repr, missing))}; "
                                        f"it has {', '.join(dataset.schema.names)}.")
            return dataset.to_table(columns=columns)
        except FileNotFoundError:  # replaced by a publish since the manifest was read
            if attempt == 2:
                raise
            fs.invalidate_cache(root)


def _result_files(fs, root: str) -> list[str]:
    """The part files of an output folder: those its manifest names (`files`), else every `part-*.parquet`;
    a partitioned OUTPUT's are its KEY=VALUE partitions' (each by its own manifest)."""
    from rayrank.io.storage import manifest_files

    named = manifest_files(fs, root)
    if named is not None:
        return [f"{root}/{name}" for name in named if name.startswith("part-")]
    parts = sorted(fs.glob(f"{root}/part-*.parquet"))
    if parts:
        return parts
    partitions = [d for d in fs.ls(root, detail=False) if re.fullmatch(r"[^_.][^/]*=[^/]*", d.rsplit("/", 1)[-1])]
    return [f for d in sorted(partitions) if fs.isdir(d) for f in _result_files(fs, d)]


@command("eval")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rayrank eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="rerank output: a Parquet file or directory (local or s3://), or a TREC run "
                        "file (qid Q0 docid rank score tag; any file that is not Parquet)")
    parser.add_argument("--qrels", required=True, help="TREC qrels file: query_id 0 doc_id grade")
    parser.add_argument("--baseline-column", help="also evaluate this column, e.g. bm25_rank (lower is better)")
    parser.add_argument("--min-relevance", type=int, default=1, help="grade that counts as relevant for MRR/recall")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    qrels = load_qrels(args.qrels)
    rows = {"run (score)": evaluate(read_run(args.run), qrels, args.min_relevance)}
    if args.baseline_column:
        rows[f"baseline ({args.baseline_column})"] = evaluate(
            read_run(args.run, args.baseline_column), qrels, args.min_relevance)
    if args.json:
        print(json.dumps({name: {k: v for k, v in asdict(m).items() if k != "per_query"}
                          for name, m in rows.items()}, indent=2))
        return 0
    print(f"{'':24} {'nDCG@10':>8} {'MRR@10':>8} {'R@10':>8} {'R@100':>8} {'queries':>8}")
    for name, m in rows.items():
        print(f"{name:24} {m.ndcg_at_10:8.4f} {m.mrr_at_10:8.4f} {m.recall_at_10:8.4f} {m.recall_at_100:8.4f} "
              f"{m.queries:8d}")
    first = next(iter(rows.values()))
    if first.skipped_unjudged or first.missing_from_run:
        print(f"skipped {first.skipped_unjudged} run queries without judgments; "
              f"{first.missing_from_run} judged queries are missing from the run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
