"""Prometheus metrics of the search application (`ray_rayrank_search_*`), with local copies for `/healthz`."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Mapping

from ray.serve import metrics

STAGE_MS_BOUNDARIES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]


class SearchMetrics:
    """Requests, fallbacks by stage and reason, rejections by reason, and each stage's milliseconds."""

    def __init__(self) -> None:
        self.counts: Tally[str] = Tally()
        self._requests = metrics.Counter("rayrank_search_requests", "Search requests answered.")
        self._fallbacks = metrics.Counter(
            "rayrank_search_fallbacks", "Stages skipped to meet a request's latency budget, by stage and reason "
            "(queue: its queue could not drain in time; deadline: it did not answer in time).",
            tag_keys=("stage", "reason"))
        self._rejected = metrics.Counter("rayrank_search_rejected", "Search requests refused, by reason.",
                                         tag_keys=("reason",))
        self._stage_ms = metrics.Histogram("rayrank_search_stage_ms", "Milliseconds per stage and query, queue "
                                           "included.", boundaries=STAGE_MS_BOUNDARIES, tag_keys=("stage",))

    def answered(self, stage_ms: dict[str, float]) -> None:
        self.counts["requests"] += 1
        self._requests.inc()
        for stage, ms in stage_ms.items():
            self._stage_ms.observe(ms, tags={"stage": stage})

    def fallback(self, stage: str, reason: str) -> None:
        self.counts[f"fallback_{stage}_{reason}"] += 1
        self._fallbacks.inc(tags={"stage": stage, "reason": reason})

    def rejected(self, reason: str) -> None:
        self.counts[f"rejected_{reason}"] += 1
        self._rejected.inc(tags={"reason": reason})


class StageEvents:
    """A stage's own event counts (`stage.counts`: the LLM's calls, repairs and failures by reason, ...)
    exported as `ray_rayrank_search_stage_events{stage, event}`."""

    def __init__(self, stage: str) -> None:
        self._exported: Tally[str] = Tally()
        self._events = metrics.Counter("rayrank_search_stage_events", "Events counted by a funnel stage, e.g. "
                                       "failure:timeout of the llm stage.", tag_keys=("stage", "event"))
        self._events.set_default_tags({"stage": stage})

    def export(self, counts: Mapping[str, int]) -> None:
        """Add what `counts` (cumulative) gained since the last export."""
        try:
            now = Tally(dict(counts))
        except RuntimeError:  # a worker thread was adding a key: the next export carries it
            return
        for event, n in (now - self._exported).items():
            self._events.inc(n, tags={"event": event})
        self._exported = now
