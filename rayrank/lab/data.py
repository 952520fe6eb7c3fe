"""Training data for the lab: Parquet pairs/triples, or examples mined from queries + corpus + qrels.

Mining takes each judged query's ranked list (a candidates table, or BM25 over the corpus), drops the
judged-relevant documents and samples hard negatives from ranks `skip_top`..`depth`: documents that
look relevant to a first stage but are not, which is what a reranker must learn to push down.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from rayrank.errors import InvalidInputError

Ranked = Mapping[str, list[str]]  # query_id -> doc_ids, best first


@dataclass(frozen=True)
class Example:
    """One judged query with its relevant documents and mined hard negatives (texts, in order)."""

    query_id: str
    query: str
    positives: list[str]
    negatives: list[str]
    negative_ids: list[str]


def read_table(path: str, required: list[str], what: str) -> pa.Table:
    """Read a Parquet file, naming the file and any missing column in the error."""
    table = pq.read_table(path)
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise InvalidInputError(f"{what} {path} lacks column(s) {', '.join(missing)}; "
                                f"it has {', '.join(table.column_names)}.")
    for column in required:
        if table[column].null_count:
            raise InvalidInputError(f"{what} {path}: column {column} has {table[column].null_count} null value(s).")
    return table


def read_queries(path: str) -> dict[str, str]:
    table = read_table(path, ["query_id", "query"], "queries")
    return dict(zip(map(str, table["query_id"].to_pylist()), table["query"].to_pylist()))


def read_corpus(path: str) -> dict[str, str]:
    """doc_id → text; a `title` column is prepended (as BEIR candidate tables do: `title text`)."""
    table = read_table(path, ["doc_id", "text"], "corpus")
    texts = table["text"].to_pylist()
    if "title" in table.column_names:
        texts = [f"{t} {x}".strip() if t else x for t, x in zip(table["title"].to_pylist(), texts)]
    return dict(zip(map(str, table["doc_id"].to_pylist()), texts))


def ranked_from_candidates(path: str, rank_column: str = "bm25_rank") -> dict[str, list[str]]:
    """query_id → doc_ids of a long candidates table, best first (a `*rank*` column ascending, else descending)."""
    table = read_table(path, ["query_id", "doc_id", rank_column], "candidates")
    sign = 1.0 if "rank" in rank_column else -1.0
    rows = sorted(zip(map(str, table["query_id"].to_pylist()), table[rank_column].to_pylist(),
                      map(str, table["doc_id"].to_pylist())), key=lambda r: (r[0], sign * r[1]))
    ranked: dict[str, list[str]] = {}
    for qid, _, did in rows:
        ranked.setdefault(qid, []).append(did)
    return ranked


def ranked_from_bm25(queries: Mapping[str, str], corpus: Mapping[str, str], depth: int) -> dict[str, list[str]]:
    """query_id → the BM25 top-`depth` doc_ids over `corpus`."""
    from rayrank.funnel.bm25 import BM25

    doc_ids = list(corpus)
    hits = BM25([corpus[d] for d in doc_ids]).search(list(queries.values()), depth)
    return {qid: [doc_ids[i] for i in top] for qid, top in zip(queries, hits)}


def mine(queries: Mapping[str, str], corpus: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]],
         ranked: Ranked, negatives: int, depth: int = 30, skip_top: int = 0, seed: int = 0) -> list[Example]:
    """One Example per query that has a relevant document in the corpus.

    Negatives are sampled without replacement from ranks [skip_top, depth) of the query's ranked
    list, minus every judged document; fewer are returned when the list runs short.
    """
    rng = random.Random(seed)
    examples = []
    for qid, query in queries.items():
        judged = qrels.get(qid, {})
        positives = [d for d, grade in judged.items() if grade > 0 and d in corpus]
        if not positives:
            continue
        pool = [d for d in ranked.get(qid, [])[skip_top:depth] if d not in judged and d in corpus]
        picked = rng.sample(pool, min(negatives, len(pool)))
        examples.append(Example(qid, query, [corpus[d] for d in positives], [corpus[d] for d in picked], picked))
    if not examples:
        raise InvalidInputError("no query has a relevant document in the corpus: check that the qrels' "
                                "query_id and doc_id match the queries and corpus tables.")
    return examples


def to_pairs(examples: list[Example]) -> dict[str, list]:
    """Labelled pairs for BCE: every positive (1.0) and every negative (0.0) of each query."""
    columns: dict[str, list] = {"query": [], "document": [], "label": []}
    for ex in examples:
        for docs, label in ((ex.positives, 1.0), (ex.negatives, 0.0)):
            columns["query"] += [ex.query] * len(docs)
            columns["document"] += docs
            columns["label"] += [label] * len(docs)
    return columns


def to_triples(examples: list[Example]) -> dict[str, list]:
    """(query, positive, negative) for a pairwise loss: each negative paired with a positive in turn."""
    columns: dict[str, list] = {"query": [], "positive": [], "negative": []}
    for ex in examples:
        for i, negative in enumerate(ex.negatives):
            columns["query"].append(ex.query)
            columns["positive"].append(ex.positives[i % len(ex.positives)])
            columns["negative"].append(negative)
    return columns


def to_lists(query_ids: list[str], queries: list[str], texts: list[str], scores: list[float], list_size: int,
             rounds: int = 1, seed: int = 0) -> dict[str, list]:
    """Listwise examples (query, docs, labels): each query's best-scored document leads every list of its
    query, followed by `list_size - 1` of its other documents; each round deals every other document once.

    Leading with the best document keeps a clear target in every list (a list of only negatives
    teaches a softmax nothing); a query with a single document gives no list.

    Example:
        >>> to_lists(["q", "q", "q"], ["Q"] * 3, ["a", "b", "c"], [0.0, 2.0, 1.0], list_size=2)
        {'query': ['Q', 'Q'], 'docs': [['b', 'c'], ['b', 'a']], 'labels': [[2.0, 1.0], [2.0, 0.0]]}
    """
    if list_size < 2:
        raise InvalidInputError(f"list_size must be at least 2 (the best document and one other), got {list_size}.")
    rng = random.Random(seed)
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(query_ids):
        groups.setdefault(q, []).append(i)
    lists = []
    for _ in range(rounds):
        for rows in groups.values():
            best, *others = sorted(rows, key=lambda i: -scores[i])
            rng.shuffle(others)
            lists += [[best, *others[k:k + list_size - 1]] for k in range(0, len(others), list_size - 1)]
    rng.shuffle(lists)
    return {"query": [queries[rows[0]] for rows in lists], "docs": [[texts[i] for i in rows] for rows in lists],
            "labels": [[float(scores[i]) for i in rows] for rows in lists]}
