"""`Reranker`: the Python API over the engine — score, rank, and score many pairs at once."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayrank.config import EngineConfig
from rayrank.errors import InvalidInputError
from rayrank.models import ResolvedModel, resolve_model
from rayrank.scoring import PairScores, Scorer, load_scorer
from rayrank.scoring.base import sigmoid  # noqa: F401 - rayrank.sigmoid
from rayrank.validate import check_texts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    """One ranked document: its position in the input, its id (if given), its score and text."""

    index: int
    score: float
    doc_id: Any = None
    document: str | None = None


@dataclass(frozen=True)
class RankedResults:
    """Results best first; `truncated` counts documents that were cut to the model's length."""

    query: str
    results: list[Result]
    truncated: int = 0

    def top_k(self, k: int) -> list[Result]:
        return self.results[:k]

    def __iter__(self):
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)


class Reranker:
    """Rerank documents for queries with a cross-encoder or a late-interaction model.

    Args:
        model: a Hugging Face id or local directory; defaults to the scorer's default model.
        scorer: "cross-encoder" or "late-interaction".
        backend: "torch" or "onnx".
        **settings: any other `EngineConfig` field (device, dtype, quantize, max_length, ...).

    Example:
        >>> reranker = Reranker("sentence-transformers/all-MiniLM-L6-v2", scorer="late-interaction")  # doctest: +SKIP
        >>> reranker.rank("what is ray?", ["Ray scales Python.", "Rays are fish."]).top_k(1)  # doctest: +SKIP
    """

    def __init__(self, model: str | None = None, scorer: str = "cross-encoder", backend: str = "torch",
                 **settings: Any) -> None:
        self.config = EngineConfig(model=model, scorer=scorer, backend=backend, **settings)
        self.resolved: ResolvedModel = resolve_model(self.config.model_name)
        self.scorer: Scorer = load_scorer(self.config, self.resolved)

    @classmethod
    def from_config(cls, config: EngineConfig) -> Reranker:
        return cls(**config.model_dump())

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> PairScores:
        """Score aligned (query, document) lists; the batch form the jobs and the server use."""
        if len(queries) != len(documents):
            raise InvalidInputError(f"got {len(queries)} queries and {len(documents)} documents; "
                                    "score_pairs takes one query per document.")
        check_texts(queries, "query")
        check_texts(documents, "document")
        return self.scorer.score_pairs(list(queries), list(documents))

    def relevance(self, queries: Sequence[str], scores: np.ndarray) -> np.ndarray:
        """`score_pairs` scores mapped into [0, 1], monotone per query (see each scorer's `relevance`)."""
        return self.scorer.relevance(list(queries), scores)

    def cut_documents(self, documents: Sequence[str], max_tokens: int) -> list[str]:
        """Each document cut after its first `max_tokens` tokens (a per-request limit, e.g. Cohere's)."""
        return self.scorer.tokenizer.cut_texts(documents, max_tokens)

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """One float32 score per document, in input order (logits for cross-encoders)."""
        check_texts([query], "query")
        return self.score_pairs([query] * len(documents), documents).scores

    def rank(self, query: str, documents: Sequence[str], doc_ids: Sequence[Any] | None = None,
             top_n: int | None = None, return_documents: bool = False) -> RankedResults:
        """Documents sorted best first; ties keep input order. `top_n` keeps the best N."""
        if doc_ids is not None and len(doc_ids) != len(documents):
            raise InvalidInputError(f"got {len(doc_ids)} doc_ids for {len(documents)} documents.")
        if top_n is not None and top_n <= 0:
            raise InvalidInputError(f"top_n must be a positive integer, got {top_n}.")
        check_texts([query], "query")
        pair_scores = self.score_pairs([query] * len(documents), documents)
        order = np.argsort(-pair_scores.scores, kind="stable")[:top_n]
        results = [Result(index=int(i), score=float(pair_scores.scores[i]),
                          doc_id=None if doc_ids is None else doc_ids[i],
                          document=documents[i] if return_documents else None) for i in order]
        return RankedResults(query, results, pair_scores.truncated)
