"""`Reranker`: the Python API over the engine — score, rank, and score many pairs at once."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rayrank.backends import auto
from rayrank.backends.onnx_backend import weights_fingerprint
from rayrank.backends.torch_backend import pick_device
from rayrank.config import EngineConfig
from rayrank.errors import InvalidInputError
from rayrank.models import ResolvedModel, resolve_model
from rayrank.ranking import Ranking
from rayrank.scoring import PairScores, Scorer, load_scorer
from rayrank.scoring.base import position_limit, sigmoid  # noqa: F401 - rayrank.sigmoid
from rayrank.validate import check_texts

logger = logging.getLogger(__name__)


def resolve_engine(config: EngineConfig, resolved: ResolvedModel | None = None
                   ) -> tuple[EngineConfig, dict[str, Any] | None]:
    """Replace `backend="auto"` with this machine's fastest near-exact setting; other configs pass through.

    Returns the concrete config and the choice record for manifests (None when nothing was chosen).
    On CUDA auto is torch; with `quantize="int8"` (asked for, never chosen) it is onnx, the int8 backend.
    """
    if config.backend != "auto":
        return config, None
    if config.quantize != "none" or pick_device(config.device) != "cpu":
        backend = "onnx" if config.quantize != "none" else "torch"
        return config.model_copy(update={"backend": backend}), {"backend": backend, "dtype": config.dtype,
                                                                   "measured": None}
    from transformers import AutoConfig

    resolved = resolved or resolve_model(config.model_name)
    hf = AutoConfig.from_pretrained(str(resolved.path), local_files_only=True)
    longest = min(config.max_length or 512, position_limit(hf))
    batches = lambda: auto.synthetic_batches(hf.vocab_size, longest, hf.pad_token_id or 0, config.max_tokens_per_batch,
                                            config.max_batch_size, config.batch_overhead_tokens or 32)
    load = lambda backend, dtype: load_scorer(config.model_copy(update={"backend": backend, "dtype": dtype}),
                                              resolved).backend  # type: ignore[attr-defined]
    key = auto.cache_key(weights_fingerprint(resolved.path), config.scorer, config.threads, config.dtype)
    record = auto.resolve(key, load, batches, Path(config.cache_dir) if config.cache_dir else None, config.dtype)
    return config.model_copy(update={"backend": record["backend"], "dtype": record["dtype"]}), record


class Reranker:
    """Rerank documents for queries with a cross-encoder or a late-interaction model.

    Args:
        model: a Hugging Face id or local directory; defaults to the scorer's default model.
        scorer: "cross-encoder" (decoder rerankers such as Qwen3-Reranker included) or "late-interaction".
        backend: "auto" (the fastest near-exact setting on this machine, measured once and cached),
            "torch", "onnx" or "openvino".
        **settings: any other `EngineConfig` field (device, dtype, quantize, threads, max_length, ...), e.g.
            `instruction="Find code that answers the question"` for a decoder reranker.

    Example:
        >>> reranker = Reranker("sentence-transformers/all-MiniLM-L6-v2", scorer="late-interaction")  # doctest: +SKIP
        >>> reranker.rank("what is ray?", ["Ray scales Python.", "Rays are fish."]).positions  # doctest: +SKIP
    """

    def __init__(self, model: str | None = None, scorer: str = "cross-encoder", backend: str = "auto",
                 **settings: Any) -> None:
        config = EngineConfig(model=model, scorer=scorer, backend=backend, **settings)
        self.resolved: ResolvedModel = resolve_model(config.model_name)
        # `config` is concrete (auto resolved); `backend_choice` is how auto chose, for manifests.
        self.config, self.backend_choice = resolve_engine(config, self.resolved)
        self.scorer: Scorer = load_scorer(self.config, self.resolved)
        self.config = self.scorer.config  # what runs: a decoder's defaults (token budget, CUDA dtype) included

    @classmethod
    def from_config(cls, config: EngineConfig) -> Reranker:
        # Only the keys that were set: defaults that depend on the model (a decoder's budget) stay open.
        return cls(**config.model_dump(exclude_unset=True))

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str], instruction: str | None = None
                    ) -> PairScores:
        """Score aligned (query, document) lists; the batch form the jobs and the server use.

        `instruction` replaces the configured one for this call (decoder rerankers only).
        """
        if len(queries) != len(documents):
            raise InvalidInputError(f"got {len(queries)} queries and {len(documents)} documents; "
                                    "score_pairs takes one query per document.")
        check_texts(queries, "query")
        check_texts(documents, "document")
        if instruction is None:
            return self.scorer.score_pairs(list(queries), list(documents))
        if not getattr(self.scorer, "takes_instruction", False) or not instruction.strip():
            raise InvalidInputError(f"instruction={instruction!r}: only decoder rerankers (Qwen3-Reranker, "
                                    f"mxbai-rerank-v2, bge-reranker-v2-gemma, ...) take a non-blank instruction; "
                                    f"{self.config.model_name} does not.")
        return self.scorer.score_pairs(list(queries), list(documents), instruction=instruction)

    def relevance(self, queries: Sequence[str], scores: np.ndarray) -> np.ndarray:
        """`score_pairs` scores mapped into [0, 1], monotone per query (see each scorer's `relevance`)."""
        return self.scorer.relevance(list(queries), scores)

    def cut_documents(self, documents: Sequence[str], max_tokens: int) -> list[str]:
        """Each document cut after its first `max_tokens` tokens (a per-request limit, e.g. Cohere's)."""
        return self.scorer.tokenizer.cut_texts(documents, max_tokens)

    def score(self, query: str, documents: Sequence[str], instruction: str | None = None) -> np.ndarray:
        """One float32 score per document, in input order (logits for cross-encoders)."""
        check_texts([query], "query")
        return self.score_pairs([query] * len(documents), documents, instruction).scores

    def rank(self, query: str, documents: Sequence[str], doc_ids: Sequence[Any] | None = None,
             top_n: int | None = None, return_documents: bool = False, instruction: str | None = None
             ) -> Ranking:
        """Documents sorted best first (`Ranking.positions`: their input positions); ties keep input order.

        `top_n` keeps the best N; `return_documents` puts their texts in `Ranking.documents`.
        """
        if doc_ids is not None and len(doc_ids) != len(documents):
            raise InvalidInputError(f"got {len(doc_ids)} doc_ids for {len(documents)} documents.")
        if top_n is not None and top_n <= 0:
            raise InvalidInputError(f"top_n must be a positive integer, got {top_n}.")
        check_texts([query], "query")
        pair_scores = self.score_pairs([query] * len(documents), documents, instruction)
        return Ranking.of_list(pair_scores.scores, top_n, doc_ids, documents if return_documents else None,
                               pair_scores.truncated)
