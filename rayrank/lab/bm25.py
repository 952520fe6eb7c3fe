"""A small BM25 over an in-memory corpus: enough to mine hard negatives when no candidates table exists."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from scipy import sparse

_WORD = re.compile(r"\w+")
# The most frequent English function words; BM25's idf already damps the rest.
STOPWORDS = frozenset("a an and are as at be by for from has have in is it its of on or that the this to was "
                      "were which with".split())


def tokenize(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


class BM25:
    """Okapi BM25 (k1, b) over `documents`; `search` returns the top-k document indices per query.

    Example:
        >>> index = BM25(["ray scales python", "fish swim in the sea", "python is a snake"])
        >>> index.search(["python snake"], k=2)[0].tolist()
        [2, 0]
    """

    def __init__(self, documents: Sequence[str], k1: float = 0.9, b: float = 0.4) -> None:
        self.vocab: dict[str, int] = {}
        rows, cols, counts = [], [], []
        for row, doc in enumerate(documents):
            terms: dict[int, int] = {}
            for word in tokenize(doc):
                col = self.vocab.setdefault(word, len(self.vocab))
                terms[col] = terms.get(col, 0) + 1
            rows += [row] * len(terms)
            cols += terms.keys()
            counts += terms.values()
        tf = sparse.csr_matrix((np.array(counts, np.float32), (rows, cols)),
                               shape=(len(documents), len(self.vocab)))
        lengths = np.asarray(tf.sum(axis=1)).ravel()
        df = np.bincount(tf.indices, minlength=len(self.vocab))
        self.idf = np.log1p((len(documents) - df + 0.5) / (df + 0.5)).astype(np.float32)
        norm = k1 * (1 - b + b * lengths / max(lengths.mean(), 1e-9))
        tf = tf.tocoo()
        weights = tf.data * (k1 + 1) / (tf.data + norm[tf.row])
        self.weights = sparse.csc_matrix((weights.astype(np.float32), (tf.row, tf.col)), shape=tf.shape)

    def search(self, queries: Sequence[str], k: int) -> list[np.ndarray]:
        """Indices of the `k` best documents for each query, best first (documents sharing no term are left out)."""
        return [top for top, _ in self.search_scored(queries, k)]

    def search_scored(self, queries: Sequence[str], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(indices, BM25 scores) of the `k` best documents for each query, best first, as `search`."""
        results = []
        for query in queries:
            cols = [self.vocab[w] for w in tokenize(query) if w in self.vocab]
            if not cols:
                results.append((np.empty(0, np.int64), np.empty(0, np.float32)))
                continue
            scores = np.asarray(self.weights[:, cols] @ self.idf[cols]).ravel()
            top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
            top = top[scores[top] > 0]
            results.append((top, scores[top]))
        return results
