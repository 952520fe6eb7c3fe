"""rayrank: reranking at scale — cross-encoders and late interaction, one engine for batch and online.

This package never imports ray: `jobs/` and `ray_app/` are the Ray glue around it.
"""

from rayrank.config import EngineConfig
from rayrank.errors import (BatchTooLargeError, ConfigError, InvalidInputError, ModelUnavailableError,
                            RayrankError)
from rayrank.models import ResolvedModel, resolve_model
from rayrank.reranker import RankedResults, Reranker, Result, sigmoid
from rayrank.scoring.base import PairScores

__version__ = "0.1.0"

__all__ = [
    "BatchTooLargeError", "ConfigError", "EngineConfig", "InvalidInputError", "ModelUnavailableError",
    "PairScores", "RankedResults", "RayrankError", "Reranker", "ResolvedModel", "Result", "resolve_model",
    "sigmoid", "__version__",
]
