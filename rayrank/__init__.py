"""rayrank: reranking at scale — cross-encoders and late interaction, one engine for batch and online.

This package never imports ray: `jobs/` and `ray_app/` are the Ray glue around it. The engine's
names load on first use, so `rayrank --help` and the light commands never pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from rayrank.config import EngineConfig
from rayrank.errors import (BatchTooLargeError, ConfigError, InvalidInputError, ModelUnavailableError,
                            RayrankError, UnsupportedModelError)
from rayrank.models import ResolvedModel, resolve_model

__version__ = "0.1.0"

# name -> module, imported on first access (PEP 562)
_LAZY = {"Ranking": "rayrank.ranking", "Reranker": "rayrank.reranker", "sigmoid": "rayrank.reranker",
         "PairScores": "rayrank.scoring.base"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rayrank' has no attribute {name!r}")


__all__ = [
    "BatchTooLargeError", "ConfigError", "EngineConfig", "InvalidInputError", "ModelUnavailableError",
    "PairScores", "Ranking", "RayrankError", "Reranker", "ResolvedModel", "UnsupportedModelError",
    "resolve_model", "sigmoid", "__version__",
]
