"""What one replica offers its HTTP routes: a request's pairs in (`ScoreRequest`), scores out (`RequestScores`).

`RerankService` is the interface `rayrank.ray_app.http` builds its routes on, so the HTTP module
never imports the deployment (`rayrank.ray_app.app.RerankDeployment` implements it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import rayrank
    from rayrank.index import IndexReader
    from rayrank.ray_app.config import ServeArgs
    from rayrank.ray_app.metrics import ServeMetrics
    from rayrank.ray_app.schemas import DocumentId, RequestError


@dataclass(frozen=True)
class ScoreRequest:
    """One HTTP request's pairs inside a batch; `doc_ids[i]` is set where document i was given by id."""

    query: str
    documents: list[str]
    doc_ids: tuple[str | None, ...] | None = None
    instruction: str | None = None  # a decoder reranker's instruction for this request (None: the service's)

    def keys(self) -> list[str]:
        """What identifies each document for the cache: its text, or its id."""
        if self.doc_ids is None:
            return self.documents
        return [text if doc_id is None else f"\0id:{doc_id}" for text, doc_id in zip(self.documents, self.doc_ids)]


@dataclass(frozen=True)
class RequestScores:
    """One request's scores in its document order (logits for cross-encoders, MaxSim otherwise), and whether
    they came from the query cache; unranked: the routes rank them (`rayrank.ranking.Ranking.of_list`)."""

    scores: np.ndarray
    cached: bool


class RerankService(Protocol):
    """A replica as its routes see it."""

    args: ServeArgs
    metrics: ServeMetrics
    engine: rayrank.Reranker
    index: IndexReader | None
    replica_id: str
    pairs_per_s: float | None

    @property
    def ready(self) -> bool: ...

    def stats(self) -> dict[str, int]: ...

    def overload(self, pairs: int) -> RequestError | None: ...

    def document_ids(self, documents: list[str | DocumentId], field: str) -> tuple[str | None, ...] | None: ...

    async def score(self, query: str, documents: list[str], doc_ids: tuple[str | None, ...] | None = None,
                    instruction: str | None = None) -> RequestScores: ...
