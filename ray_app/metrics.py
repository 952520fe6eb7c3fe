"""Prometheus metrics beside Serve's own, plus the same counts kept locally for `/healthz`.

Exported through Ray's metrics agent (`ray_rayrank_*` on each node's metrics port); the local
copies let tests and operators read a replica's counts over HTTP without a Prometheus.
"""

from __future__ import annotations

from collections import Counter as Tally

from ray.serve import metrics

BATCH_PAIRS_BOUNDARIES = [1, 4, 16, 64, 256, 1024, 4096, 16384]


class ServeMetrics:
    """Pairs scored, batch sizes in pairs, cache hits and misses, and rejections by reason."""

    def __init__(self, model: str) -> None:
        self.counts: Tally[str] = Tally()
        self._pairs = metrics.Counter("rayrank_pairs_scored", "Query-document pairs scored by the engine.",
                                      tag_keys=("model",))
        self._batch_pairs = metrics.Histogram("rayrank_batch_pairs", "Pairs per engine call (one per Serve batch).",
                                              boundaries=BATCH_PAIRS_BOUNDARIES, tag_keys=("model",))
        self._batch_requests = metrics.Histogram("rayrank_batch_requests", "Requests per Serve batch.",
                                                 boundaries=[1, 2, 4, 8, 16, 32, 64], tag_keys=("model",))
        self._cache = metrics.Counter("rayrank_cache_lookups", "Semantic query cache lookups by result.",
                                      tag_keys=("model", "result"))
        self._rejected = metrics.Counter("rayrank_requests_rejected", "Requests refused, by reason.",
                                         tag_keys=("model", "reason"))
        for metric in (self._pairs, self._batch_pairs, self._batch_requests, self._cache, self._rejected):
            metric.set_default_tags({"model": model})  # a fresh dict: Serve adds its tags in place

    def batch(self, requests: int, pairs: int) -> None:
        self.counts.update(batches=1, requests=requests, pairs_scored=pairs)
        self._batch_requests.observe(requests)
        if pairs:
            self._pairs.inc(pairs)
            self._batch_pairs.observe(pairs)

    def cache(self, hits: int, misses: int) -> None:
        self.counts.update(cache_hits=hits, cache_misses=misses)
        if hits:
            self._cache.inc(hits, tags={"result": "hit"})
        if misses:
            self._cache.inc(misses, tags={"result": "miss"})

    def rejected(self, reason: str) -> None:
        self.counts[f"rejected_{reason}"] += 1
        self._rejected.inc(tags={"reason": reason})
