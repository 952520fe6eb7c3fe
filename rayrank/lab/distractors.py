"""`rayrank distractors`: does a model put the relevant document above its hardest distractor?

A case is (query, relevant document, distractor), the distractor being the best-ranked judged-not-
relevant document of a first-stage ranking (BM25 over the corpus, or a candidates table). Cases are
split into `seen` topics (queries the fine-tuned model trained on) and `unseen` ones, and each model
gets a pass rate (relevant scored above distractor) and a mean margin (in its own score units:
logits for cross-encoders, MaxSim sums for late interaction — compare margins within a model).

Usage: `rayrank distractors --corpus C --seen Q_TRAIN QRELS_TRAIN --unseen Q_TEST QRELS_TEST
--model base=sentence-transformers/all-MiniLM-L6-v2 --model tuned=runs/scifact-ce-bce`
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from rayrank.cli import command
from rayrank.errors import InvalidInputError
from rayrank.evaluate import load_qrels
from rayrank.lab import data
from rayrank.lab.config import ModelSpec


def build_cases(queries: Mapping[str, str], corpus: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]],
                ranked: data.Ranked, split: str) -> list[dict[str, str]]:
    """One case per query with a relevant document and a judged-not-relevant one in its ranked list.

    Example:
        >>> build_cases({"q": "cats"}, {"a": "cats purr", "b": "cats bark", "c": "dogs"},
        ...             {"q": {"a": 1}}, {"q": ["b", "a", "c"]}, "seen")[0]["distractor"]
        'cats bark'
    """
    cases = []
    for qid, query in queries.items():
        judged = qrels.get(qid, {})
        relevant = [d for d in ranked.get(qid, []) if judged.get(d, 0) > 0]
        relevant += [d for d, g in judged.items() if g > 0 and d in corpus and d not in relevant]
        distractor = next((d for d in ranked.get(qid, []) if judged.get(d, 0) <= 0 and d in corpus), None)
        if relevant and distractor is not None:
            cases.append({"split": split, "query_id": qid, "query": query, "relevant": corpus[relevant[0]],
                          "distractor": corpus[distractor]})
    return cases


def score_cases(reranker, cases: list[dict[str, str]]) -> np.ndarray:
    """Margin score(query, relevant) − score(query, distractor) per case, in one batched call."""
    queries = [c["query"] for c in cases]
    scores = reranker.score_pairs(queries * 2, [c["relevant"] for c in cases] + [c["distractor"] for c in cases])
    return scores.scores[:len(cases)] - scores.scores[len(cases):]


def summarize(margins: np.ndarray, cases: list[dict[str, str]]) -> dict[str, dict[str, float]]:
    """Per split: case count, pass rate (margin > 0) and mean margin.

    Example:
        >>> out = summarize(np.array([1.0, -1.0, 2.0]), [{"split": "seen"}, {"split": "seen"}, {"split": "unseen"}])
        >>> out["seen"], out["unseen"]["pass_rate"]
        ({'cases': 2, 'pass_rate': 0.5, 'mean_margin': 0.0}, 1.0)
    """
    splits = np.array([c["split"] for c in cases])
    result = {}
    for split in dict.fromkeys(splits.tolist()):
        m = margins[splits == split]
        result[split] = {"cases": int(m.size), "pass_rate": round(float((m > 0).mean()), 4),
                         "mean_margin": round(float(m.mean()), 4)}
    return result


def _model_arg(text: str) -> tuple[str, str, str]:
    """NAME=[SCORER:]MODEL (NAME defaults to MODEL)."""
    name, sep, rest = text.partition("=")
    spec = ModelSpec.parse(rest if sep else text)
    return (name if sep else spec.model), spec.model, spec.scorer


@command("distractors")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rayrank distractors", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="Parquet doc_id, [title,] text")
    parser.add_argument("--seen", nargs=2, metavar=("QUERIES", "QRELS"), help="topics the tuned model trained on")
    parser.add_argument("--unseen", nargs=2, metavar=("QUERIES", "QRELS"), help="held-out topics")
    parser.add_argument("--candidates", nargs="*", default=[],
                        help="candidates tables to take distractors from (default: BM25 over the corpus)")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=[SCORER:]MODEL",
                        help="repeat: e.g. base=... tuned=...")
    parser.add_argument("--limit", type=int, help="at most N cases per split (the first N queries)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    if not args.seen and not args.unseen:
        parser.error("give --seen and/or --unseen QUERIES QRELS")

    from rayrank import Reranker

    corpus = data.read_corpus(args.corpus)
    ranked: dict[str, list[str]] = {}
    for path in args.candidates:
        ranked.update(data.ranked_from_candidates(path))
    cases = []
    for split, files in (("seen", args.seen), ("unseen", args.unseen)):
        if files:
            qrels = load_qrels(files[1])
            queries = {q: t for q, t in data.read_queries(files[0]).items() if q in qrels}
            queries = dict(list(queries.items())[:args.limit])
            lists = {q: ranked[q] for q in queries if q in ranked}
            missing = {q: t for q, t in queries.items() if q not in lists}
            if missing:
                lists.update(data.ranked_from_bm25(missing, corpus, 30))
            cases += build_cases(queries, corpus, qrels, lists, split)
    if not cases:
        raise InvalidInputError("no cases: no query has both a relevant document and a distractor; check that "
                                "the qrels' ids match the queries and the corpus.")
    rows = {}
    for name, model, scorer in map(_model_arg, args.model):
        rows[name] = summarize(score_cases(Reranker(model, scorer=scorer), cases), cases)
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
    return 0


def format_rows(rows: dict[str, dict[str, dict[str, Any]]]) -> str:
    splits = list(dict.fromkeys(s for r in rows.values() for s in r))
    head = "".join(f" {s + ' pass':>12} {s + ' margin':>14}" for s in splits)
    lines = [f"{'model':28}{head}"]
    for name, r in rows.items():
        cells = "".join(f" {r[s]['pass_rate']:12.3f} {r[s]['mean_margin']:14.3f}" if s in r else f" {'-':>12} {'-':>14}"
                        for s in splits)
        lines.append(f"{name[-28:]:28}{cells}")
    counts = ", ".join(f"{s}: {next(r[s]['cases'] for r in rows.values() if s in r)} cases" for s in splits)
    lines.append(f"({counts}; margin = score(relevant) - score(distractor), in each model's own units)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
