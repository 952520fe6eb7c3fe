"""Scorers: cross-encoder (joint reading) and late interaction (token embeddings + MaxSim)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from rayrank.config import EngineConfig
from rayrank.errors import UnsupportedModelError
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
        from rayrank.scoring.decoder import DecoderScorer, is_decoder
        if is_decoder(_hf_config(resolved.path, config.trust_remote_code), resolved.path):
            return DecoderScorer(resolved.path, config)
    if config.instruction or config.prompt_template:
        raise UnsupportedModelError(f"{config.model_name} is not a decoder reranker; instruction and "
                                    "prompt_template apply to decoder rerankers only (Qwen3-Reranker, ...): "
                                    "unset them.")
    if config.scorer == "cross-encoder":
        from rayrank.scoring.cross_encoder import CrossEncoderScorer
        return CrossEncoderScorer(resolved.path, config)
    from rayrank.scoring.late_interaction import LateInteractionScorer
    return LateInteractionScorer(resolved.path, config)


def _hf_config(model_dir, trust_remote_code: bool):
    """The checkpoint's transformers config; one that ships its own code (`auto_map`) loads only when trusted."""
    import json

    from transformers import AutoConfig

    raw = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").is_file() else {}
    if raw.get("auto_map") and not trust_remote_code:
        raise UnsupportedModelError(
            f"{model_dir} runs its own code (config.json auto_map: {sorted(raw['auto_map'])}); if you trust it, "
            "pass trust_remote_code=True (CLI --trust-remote-code, Serve engine.trust_remote_code: true).")
    return AutoConfig.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=trust_remote_code)


__all__ = ["PairScores", "Scorer", "load_scorer"]
