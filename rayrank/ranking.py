"""`Ranking`: one query's documents best first with their scores — what every ranking step returns.

The Python API (`Reranker.rank`), the HTTP routes, every funnel stage, index search (exact and IVF)
and dense search all hand back this one type, so a ranking moves between them without conversion.
Scores in input order, before any ranking, are `rayrank.PairScores`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Ranking:
    """One query's documents, best first, with float32 scores (higher is better).

    Attributes:
        doc_ids: the documents' ids, best first (None for a list ranked without ids).
        scores: float32, one per document, non-increasing.
        positions: where each document sat in the list that was ranked (a given list: the Python API,
            the HTTP routes); None for documents retrieved from a corpus or an index.
        documents: the texts, best first, where the caller asked for them back.
        truncated: documents cut to the model's length while scoring.
    """

    doc_ids: list[Any] | None
    scores: np.ndarray
    positions: np.ndarray | None = None
    documents: list[str] | None = None
    truncated: int = 0

    @classmethod
    def of(cls, doc_ids: Sequence[Any], scores: Sequence[float], k: int | None = None) -> Ranking:
        """Documents of a corpus sorted by score, ties by doc_id (reproducible whatever the input order), cut at k.

        Example:
            >>> Ranking.of(["b", "a", "c"], [1.0, 1.0, 3.0], k=2).doc_ids
            ['c', 'a']
        """
        order = sorted(range(len(doc_ids)), key=lambda i: (-scores[i], doc_ids[i]))[:k]
        return cls([doc_ids[i] for i in order], np.asarray([scores[i] for i in order], dtype=np.float32))

    @classmethod
    def of_list(cls, scores: np.ndarray, k: int | None = None, doc_ids: Sequence[Any] | None = None,
                documents: Sequence[str] | None = None, truncated: int = 0) -> Ranking:
        """A given list sorted by score, ties keeping input order (as Cohere's API does), cut at k.

        Example:
            >>> Ranking.of_list(np.array([0.5, 2.0, 0.5]), doc_ids=["x", "y", "z"]).positions.tolist()
            [1, 0, 2]
        """
        order = np.argsort(-np.asarray(scores), kind="stable")[:k]
        return cls(None if doc_ids is None else [doc_ids[i] for i in order],
                   np.asarray(scores, dtype=np.float32)[order], order,
                   None if documents is None else [documents[i] for i in order], truncated)

    def __len__(self) -> int:
        return len(self.scores)

    def top(self, k: int) -> Ranking:
        """The best k documents (positions and texts cut alike)."""
        cut = lambda values: None if values is None else values[:k]
        return Ranking(cut(self.doc_ids), self.scores[:k], cut(self.positions), cut(self.documents), self.truncated)
