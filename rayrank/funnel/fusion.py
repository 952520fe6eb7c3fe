"""Fusing ranked lists: reciprocal rank (RRF) and per-query z-scores, each list weighted.

Each input is one query's list (doc_ids best first, scores). RRF scores a document Σ w / (k + rank),
rank 1-based, absent lists adding nothing. Z-score fusion standardises each list's scores per query
((s - mean) / std; all-equal scores give 0) and sums w · z, a document absent from a list counting
that list's lowest z. Ties are broken by doc_id, so the fused order is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _ordered(totals: dict[str, float]) -> tuple[list[str], np.ndarray]:
    ids = sorted(totals, key=lambda d: (-totals[d], d))
    return ids, np.array([totals[d] for d in ids], dtype=np.float32)


def rrf(lists: Sequence[tuple[Sequence[str], np.ndarray]], weights: Sequence[float], k: int = 60
        ) -> tuple[list[str], np.ndarray]:
    """Reciprocal-rank fusion.

    Example:
        >>> ids, scores = rrf([(["a", "b"], np.array([2.0, 1.0])), (["b", "c"], np.array([5.0, 4.0]))], [1, 1], k=1)
        >>> ids, [round(float(s), 3) for s in scores]
        (['b', 'a', 'c'], [0.833, 0.5, 0.333])
    """
    totals: dict[str, float] = {}
    for (ids, _), weight in zip(lists, weights):
        for rank, doc in enumerate(ids, start=1):
            totals[doc] = totals.get(doc, 0.0) + weight / (k + rank)
    return _ordered(totals)


def zscores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    std = scores.std()
    return (scores - scores.mean()) / std if std > 0 else np.zeros_like(scores)


def zscore_fusion(lists: Sequence[tuple[Sequence[str], np.ndarray]], weights: Sequence[float]
                  ) -> tuple[list[str], np.ndarray]:
    """Weighted sum of per-list z-scores; a document a list lacks gets that list's lowest z.

    Example:
        >>> ids, scores = zscore_fusion([(["a", "b"], np.array([2.0, 0.0])), (["b", "c"], np.array([3.0, 1.0]))], [1, 1])
        >>> ids, scores.tolist()  # a: 1 + (-1, the floor of list 2); b: -1 + 1; c: -1 + (-1)
        (['a', 'b', 'c'], [0.0, 0.0, -2.0])
    """
    per_list = [dict(zip(ids, zscores(scores))) for ids, scores in lists]
    docs = {d for ids, _ in lists for d in ids}
    floors = [min(z.values()) if z else 0.0 for z in per_list]
    totals = {d: sum(w * z.get(d, floor) for z, w, floor in zip(per_list, weights, floors)) for d in docs}
    return _ordered(totals)
