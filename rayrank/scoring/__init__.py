"""Scorers: cross-encoder (joint reading) and late interaction (token embeddings + MaxSim)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from rayrank.config import EngineConfig
from rayrank.models import ResolvedModel, resolve_model
from rayrank.scoring.base import PairScores
from rayrank.tokenize import TextTokenizer


class Scorer(Protocol):
    kind: str
    tokenizer: TextTokenizer

    def score_pairs(self, queries: list[str], documents: list[str]) -> PairScores: ...

    def relevance(self, queries: list[str], scores: np.ndarray) -> np.ndarray: ...


def load_scorer(config: EngineConfig, resolved: ResolvedModel | None = None) -> Scorer:
    """Resolve the configured model and build its scorer on the configured backend."""
    resolved = resolved or resolve_model(config.model_name)
    if config.scorer == "cross-encoder":
        from rayrank.scoring.cross_encoder import CrossEncoderScorer
        return CrossEncoderScorer(resolved.path, config)
    from rayrank.scoring.late_interaction import LateInteractionScorer
    return LateInteractionScorer(resolved.path, config)


__all__ = ["PairScores", "Scorer", "load_scorer"]
