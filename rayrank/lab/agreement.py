"""How much two rankers agree on the same candidates: Kendall τ and top-k overlap, averaged over queries."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from scipy.stats import kendalltau

from rayrank.evaluate import Run


def top_k(scores: Mapping[str, float], k: int) -> list[str]:
    """The k best doc_ids, ties broken by doc_id descending (as `rayrank.evaluate` ranks)."""
    return [d for d, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:k]]


def agreement(a: Run, b: Run, ks: Sequence[int] = (3, 5)) -> dict[str, float]:
    """Mean per-query Kendall τ-b over the documents both runs scored, and mean top-k overlap (0–1;
    |top-k(a) ∩ top-k(b)| / k, with k capped at the shorter list).

    Queries where τ is undefined (fewer than 2 shared documents, or constant scores) are left out
    of the τ mean and counted in `tau_undefined`.

    Example:
        >>> run = {"q": {"d1": 3.0, "d2": 2.0, "d3": 1.0}}
        >>> agreement(run, run, ks=(1,))
        {'kendall_tau': 1.0, 'top1_overlap': 1.0, 'queries': 1, 'tau_undefined': 0}
        >>> agreement(run, {"q": {"d1": 1.0, "d2": 2.0, "d3": 3.0}}, ks=(1,))["kendall_tau"]
        -1.0
    """
    taus, overlaps = [], {k: [] for k in ks}
    queries = [q for q in a if q in b]
    for q in queries:
        shared = sorted(set(a[q]) & set(b[q]))
        if len(shared) >= 2:
            tau = kendalltau([a[q][d] for d in shared], [b[q][d] for d in shared]).statistic
            if not math.isnan(tau):
                taus.append(float(tau))
        for k in ks:  # a query with fewer than k candidates is compared on all it has
            depth = min(k, len(a[q]), len(b[q]))
            if depth:
                overlaps[k].append(len(set(top_k(a[q], depth)) & set(top_k(b[q], depth))) / depth)
    result = {"kendall_tau": round(sum(taus) / len(taus), 6) if taus else float("nan")}
    result.update({f"top{k}_overlap": round(sum(v) / len(v), 6) if v else float("nan") for k, v in overlaps.items()})
    result.update(queries=len(queries), tau_undefined=len(queries) - len(taus))
    return result
