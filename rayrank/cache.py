"""Semantic query cache: a repeated or near-duplicate query over the same documents reuses its scores.

Queries are compared by bi-encoder cosine similarity (mean-pooled token embeddings of a
late-interaction encoder, e.g. the bundled all-MiniLM-L6-v2), and only against entries for the
same set of documents, so a hit can never return scores for documents the caller did not send.
No Ray here: the Serve deployment wraps it, and unit tests drive it directly.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def documents_key(documents: Sequence[str], variant: str = "") -> str:
    """A key for a set of documents (order and duplicates ignored) and whatever else changes scores."""
    digest = hashlib.sha256(variant.encode())
    for text in sorted(set(documents)):
        digest.update(len(text).to_bytes(8, "little"))
        digest.update(text.encode())
    return digest.hexdigest()


def mean_pooled(token_embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """(n, dim) unit vectors: each text's token embeddings averaged, then L2-normalised.

    Example:
        >>> mean_pooled([np.array([[1.0, 0.0], [0.0, 1.0]])]).round(3)
        array([[0.707, 0.707]], dtype=float32)
    """
    pooled = np.stack([t.astype(np.float32).mean(axis=0) for t in token_embeddings])
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


@dataclass
class _Entry:
    vectors: np.ndarray  # (queries, dim) unit vectors of queries answered for this document set
    scores: list[dict[str, float]]  # per query: document text -> score


class QueryCache:
    """LRU over document sets; within a set, the closest earlier query at cosine >= `threshold` hits.

    Args:
        threshold: minimum cosine similarity for a near-duplicate query to count as the same query.
        max_entries: cached (query, document set) pairs kept; eviction starts at the least recently used set.

    Example:
        >>> cache = QueryCache(threshold=0.9)
        >>> key = documents_key(["a", "b"])
        >>> cache.store(key, np.array([1.0, 0.0]), {"a": 0.5, "b": 0.1})
        >>> cache.lookup(key, np.array([0.99, 0.14]))
        {'a': 0.5, 'b': 0.1}
        >>> cache.lookup(key, np.array([0.0, 1.0])) is None, cache.hits, cache.misses
        (True, 1, 1)
    """

    def __init__(self, threshold: float = 0.95, max_entries: int = 1024) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}.")
        if max_entries <= 0:
            raise ValueError(f"max_entries must be a positive integer, got {max_entries}.")
        self.threshold = threshold
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._sets: OrderedDict[str, _Entry] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def lookup(self, key: str, vector: np.ndarray) -> dict[str, float] | None:
        """Scores by document text for the most similar cached query over `key`'s documents, or None."""
        entry = self._sets.get(key)
        if entry is not None:
            similarity = entry.vectors @ vector.astype(np.float32)
            best = int(np.argmax(similarity))
            if similarity[best] >= self.threshold:
                self._sets.move_to_end(key)
                self.hits += 1
                return entry.scores[best]
        self.misses += 1
        return None

    def store(self, key: str, vector: np.ndarray, scores: dict[str, float]) -> None:
        """Remember `scores` (document text -> score) for a query vector over `key`'s documents."""
        vector = vector.astype(np.float32)[None, :]
        entry = self._sets.get(key)
        if entry is None:
            self._sets[key] = _Entry(vector, [scores])
        else:
            entry.vectors = np.concatenate([entry.vectors, vector])
            entry.scores.append(scores)
            self._sets.move_to_end(key)
        self._size += 1
        while self._size > self.max_entries:  # drop the oldest query of the least recently used set
            oldest_key, oldest = next(iter(self._sets.items()))
            oldest.vectors, oldest.scores = oldest.vectors[1:], oldest.scores[1:]
            if not oldest.scores:
                del self._sets[oldest_key]
            self._size -= 1
