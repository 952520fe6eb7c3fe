"""BM25 on SciFact: rayrank's scorer (rayrank.funnel.bm25) against the `bm25s` library, same run, round-robin.

    pip install bm25s PyStemmer && python bench/bm25.py [--repeats 3]

Over the 5,183 abstracts (title + " " + abstract) and the 300 test claims: nDCG@10 and Recall@100
(rayrank eval's conventions), the share of claims whose top-100 equals rayrank's, and index and search
time (best of --repeats), each as a ratio to rayrank's. `bm25s, same tokenizer` feeds bm25s the words
rayrank's tokenizer produces, so any difference there is the scoring itself.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pyarrow.parquet as pq
from _common import SCIFACT, interleaved, load_average, skip_message, table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (SCIFACT / "corpus.parquet").is_file():
        print(skip_message(SCIFACT))
        return 0
    import bm25s

    from rayrank.evaluate import evaluate, load_qrels
    from rayrank.funnel.bm25 import BM25, tokenize

    corpus = pq.read_table(SCIFACT / "corpus.parquet").to_pylist()
    ids = [r["doc_id"] for r in corpus]
    docs = [f"{r['title']} {r['text']}".strip() for r in corpus]
    queries = pq.read_table(SCIFACT / "queries.test.parquet").to_pylist()
    qids, texts = [r["query_id"] for r in queries], [r["query"] for r in queries]
    qrels = load_qrels(SCIFACT / "qrels.test.txt")

    def with_bm25s(stemmer: str | None, own_tokens: bool):
        def build():
            stem = None
            if stemmer:
                import Stemmer

                stem = Stemmer.Stemmer(stemmer).stemWord
            tokenizer = bm25s.tokenization.Tokenizer(stopwords="en", stemmer=stem)
            model = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
            if own_tokens:
                model.index([tokenize(d) for d in docs], show_progress=False)
                encode = lambda qs: [tokenize(q) or [""] for q in qs]  # noqa: E731
            else:
                model.index(tokenizer.tokenize(docs, show_progress=False, return_as="ids"), show_progress=False)
                encode = lambda qs: tokenizer.tokenize(qs, update_vocab=False, show_progress=False,  # noqa: E731
                                                       return_as="ids")

            def search(qs, k):
                top, scores = model.retrieve(encode(qs), k=k, show_progress=False)
                return [(t[s > 0], s[s > 0]) for t, s in zip(top, scores)]
            return search
        return build

    contenders = {
        "rayrank BM25": lambda: BM25(docs).search_scored,
        "rayrank BM25, stemmed": lambda: BM25(docs, stemmer="english").search_scored,
        "bm25s, same tokenizer": with_bm25s(None, True),
        "bm25s, its tokenizer, stemmed": with_bm25s("english", False),
    }
    print(f"load average at start {load_average()}", file=sys.stderr)
    built = interleaved(contenders, args.repeats)
    searches = interleaved({name: (lambda s=search: s(texts, 100)) for name, (_, search) in built.items()},
                           args.repeats)
    base_hits = searches["rayrank BM25"][1]
    base_index, base_search = built["rayrank BM25"][0], searches["rayrank BM25"][0]
    rows = []
    for name, (seconds, hits) in searches.items():
        run = {qid: {ids[i]: float(s) for i, s in zip(top, scores)} for qid, (top, scores) in zip(qids, hits)}
        metrics = evaluate(run, qrels)
        same = np.mean([set(a[0].tolist()) == set(b[0].tolist()) for a, b in zip(hits, base_hits)])
        rows.append({"implementation": name, "nDCG@10": metrics.ndcg_at_10, "R@100": metrics.recall_at_100,
                     "same top-100 set": same, "index s": built[name][0], "index × rayrank": base_index / built[name][0],
                     "search ms/claim": 1000 * seconds / len(texts), "search × rayrank": base_search / seconds})
    print(f"SciFact, {len(docs):,} abstracts, {len(texts)} test claims, k1 0.9, b 0.4, best of {args.repeats} "
          f"(load average at end {load_average()}); × rayrank > 1 means faster than rayrank's")
    print(table(rows, "{:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
