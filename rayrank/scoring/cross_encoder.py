"""Cross-encoder scorer: one logit per (query, document) pair, read jointly by the model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rayrank.config import EngineConfig
from rayrank.errors import UnsupportedModelError
from rayrank.scoring.base import (
    PairScores,
    attention_for,
    chunking_of,
    make_backend,
    position_limit,
    report_truncation,
    run_batches,
    sigmoid,
)
from rayrank.tokenize import TextTokenizer


class _Logit(torch.nn.Module):
    """Sequence-classification model → its single logit, the function both backends run."""

    def __init__(self, model: torch.nn.Module, uses_token_types: bool) -> None:
        super().__init__()
        self.model = model
        self.uses_token_types = uses_token_types

    def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: D401 - torch signature
        extra = {"token_type_ids": token_type_ids} if self.uses_token_types else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits[:, 0]


def model_max_length(config, tokenizer: TextTokenizer, requested: int | None = None) -> int:
    """The longest input to run: `requested` (a user's `max_length`) up to the model's position
    embeddings; without one, the positions capped by the tokenizer's saved limit.

    A checkpoint's tokenizer limit is a default, not a property of the weights (a student saved at
    128 tokens still has 512 positions), so it must not silently cap a length the user asked for.
    """
    positions = position_limit(config)
    if requested is not None:
        return min(requested, positions)
    limit = tokenizer.model_max_length
    return min(positions, limit) if limit and limit < 1_000_000 else positions


class CrossEncoderScorer:
    """Scores pairs with a single-logit sequence-classification checkpoint.

    `score` is the raw logit; apply `sigmoid` for a probability (what sentence-transformers
    returns by default for one-label models).
    """

    kind = "cross-encoder"

    def __init__(self, model_dir: Path, config: EngineConfig) -> None:
        from transformers import AutoConfig, AutoModelForSequenceClassification

        hf_config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), config=hf_config, local_files_only=True,
            attn_implementation=attention_for(hf_config, config.backend))
        if model.config.num_labels != 1:
            raise UnsupportedModelError(f"{model_dir} has {model.config.num_labels} labels; rayrank reranks with "
                                        "single-logit cross-encoders (num_labels=1) and decoder rerankers (a "
                                        "ForCausalLM answering yes/no, e.g. Qwen3-Reranker).")
        self.tokenizer = TextTokenizer(model_dir)
        self.max_length = model_max_length(model.config, self.tokenizer, config.max_length)
        self.config = config
        uses_types = self.tokenizer.uses_token_types and getattr(model.config, "type_vocab_size", 0) > 1
        self.backend = make_backend(config, _Logit(model, uses_types), model_dir, "logit", model.config)

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> PairScores:
        """Score aligned lists of queries and documents; scores come back in input order."""
        scores = np.empty(len(queries), dtype=np.float32)
        if not len(queries):
            return PairScores(scores)
        chunking = chunking_of(self.config)
        if chunking is None:
            encoded = self.tokenizer.encode_pairs(queries, documents, self.max_length)
            for rows, logits in run_batches(self.backend, encoded, self.config, self.tokenizer.pad_id):
                scores[rows] = logits
            truncated = encoded.truncated
        else:  # every (query, window) pair in the same token-budget batches; the best window wins
            chunked = self.tokenizer.encode_pairs_chunked(queries, documents, self.max_length, chunking)
            scores.fill(-np.inf)
            for rows, logits in run_batches(self.backend, chunked.encoded, self.config, self.tokenizer.pad_id):
                np.maximum.at(scores, chunked.owners[rows], logits)
            truncated = chunked.truncated
        report_truncation(truncated, len(queries), "pairs", self.max_length)
        return PairScores(scores, truncated)

    def relevance(self, queries: Sequence[str], scores: np.ndarray) -> np.ndarray:
        """Scores in [0, 1]: the logit's sigmoid (what sentence-transformers returns for one label)."""
        return sigmoid(scores)
