"""Late-interaction (ColBERT-style) scorer: per-token embeddings and MaxSim.

Works with any BERT-family encoder. ColBERT conventions apply when the checkpoint defines them
(PyLate writes them to `config_sentence_transformers.json`): `[Q]`/`[D]` markers, queries padded
with `[MASK]` to `query_length`, a linear projection (`Dense` module), and a punctuation skiplist
applied to documents. A plain encoder (e.g. all-MiniLM-L6-v2) scores its real tokens only.
"""

from __future__ import annotations

import json
import logging
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rayrank.config import EngineConfig
from rayrank.scoring.base import PairScores, chunking_of, make_backend, report_truncation, run_batches
from rayrank.scoring.cross_encoder import model_max_length
from rayrank.tokenize import Encoded, TextTokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ColbertConventions:
    """How queries and documents are marked, padded and filtered; recorded in index manifests."""

    query_prefix: str = ""
    document_prefix: str = ""
    query_length: int | None = None  # set: pad queries with [MASK] to this length (query augmentation)
    document_length: int | None = None
    attend_to_expansion_tokens: bool = False
    skiplist_words: tuple[str, ...] = field(default_factory=lambda: tuple(string.punctuation))

    @classmethod
    def read(cls, model_dir: Path) -> ColbertConventions:
        """Read PyLate's keys when present; a plain sentence-transformers folder gets the defaults."""
        path = model_dir / "config_sentence_transformers.json"
        data = json.loads(path.read_text()) if path.is_file() else {}
        if "query_prefix" not in data and "query_length" not in data:
            return cls()
        return cls(
            query_prefix=data.get("query_prefix") or "",
            document_prefix=data.get("document_prefix") or "",
            query_length=data.get("query_length") if data.get("do_query_expansion", True) else None,
            document_length=data.get("document_length"),
            attend_to_expansion_tokens=bool(data.get("attend_to_expansion_tokens", False)),
            skiplist_words=tuple(data.get("skiplist_words") or string.punctuation),
        )


def _projection(model_dir: Path) -> torch.nn.Linear | None:
    """The Dense module a ColBERT checkpoint lists in modules.json (e.g. 384 → 128), if any."""
    modules = model_dir / "modules.json"
    if not modules.is_file():
        return None
    for module in json.loads(modules.read_text()):
        if module.get("type", "").endswith("Dense"):
            folder = model_dir / module["path"]
            cfg = json.loads((folder / "config.json").read_text())
            linear = torch.nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg.get("bias", True))
            weights = folder / "model.safetensors"
            if weights.is_file():
                from safetensors.torch import load_file
                state = load_file(str(weights))
            else:
                state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
            linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
            return linear
    return None


def _max_seq_length(model_dir: Path) -> int | None:
    path = model_dir / "sentence_bert_config.json"
    return json.loads(path.read_text()).get("max_seq_length") if path.is_file() else None


class _TokenEmbeddings(torch.nn.Module):
    """Encoder → optional projection → L2-normalised token embeddings (rows, tokens, dim)."""

    def __init__(self, encoder: torch.nn.Module, projection: torch.nn.Linear | None, uses_token_types: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.projection = projection
        self.uses_token_types = uses_token_types

    def forward(self, input_ids, attention_mask, token_type_ids):
        extra = {"token_type_ids": token_type_ids} if self.uses_token_types else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        if self.projection is not None:
            hidden = self.projection(hidden)
        return torch.nn.functional.normalize(hidden, dim=-1)


def maxsim(query: np.ndarray, documents: Sequence[np.ndarray]) -> np.ndarray:
    """ColBERT MaxSim: for each document, the sum over query tokens of the best-matching document token.

    Args:
        query: (query_tokens, dim) embeddings.
        documents: per-document (tokens, dim) embeddings, any float dtype; none may be empty.

    Returns:
        float32 array, one score per document.

    Example:
        >>> q = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> maxsim(q, [np.array([[1.0, 0.0]]), np.array([[0.6, 0.8], [0.0, 1.0]])]).tolist()
        [1.0, 1.600000023841858]
    """
    if not len(documents):
        return np.empty(0, dtype=np.float32)
    sizes = np.fromiter((len(d) for d in documents), dtype=np.int64, count=len(documents))
    if (sizes == 0).any():
        raise ValueError(f"document {int(np.argmax(sizes == 0))} has no token embeddings.")
    tokens = np.concatenate(documents).astype(np.float32, copy=False)
    similarity = tokens @ query.astype(np.float32, copy=False).T  # (all doc tokens, query tokens)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    return np.maximum.reduceat(similarity, starts, axis=0).sum(axis=1).astype(np.float32)


class LateInteractionScorer:
    """Encodes queries and documents into token embeddings and scores pairs with MaxSim."""

    kind = "late-interaction"

    def __init__(self, model_dir: Path, config: EngineConfig) -> None:
        from transformers import AutoModel

        attn = "eager" if config.backend == "onnx" else "sdpa"
        encoder = AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation=attn)
        self.tokenizer = TextTokenizer(model_dir)
        self.conventions = ColbertConventions.read(model_dir)
        self.tokenizer.add_markers([self.conventions.query_prefix, self.conventions.document_prefix])
        limit = model_max_length(encoder.config, self.tokenizer)
        conv = self.conventions
        if config.max_length is not None:  # the user's length wins over the checkpoint's saved limits
            self.document_max_length = model_max_length(encoder.config, self.tokenizer, config.max_length)
        else:
            self.document_max_length = min(conv.document_length or _max_seq_length(model_dir) or limit, limit)
        self.query_max_length = model_max_length(encoder.config, self.tokenizer, config.query_max_length
                                                 or conv.query_length or self.document_max_length)
        self.skip_ids = np.array(sorted(self.tokenizer.token_ids(conv.skiplist_words)), dtype=np.int64)
        projection = _projection(model_dir)
        self.dim = projection.out_features if projection is not None else encoder.config.hidden_size
        self.config = config
        uses_types = self.tokenizer.uses_token_types and getattr(encoder.config, "type_vocab_size", 0) > 1
        self.backend = make_backend(config, _TokenEmbeddings(encoder, projection, uses_types), model_dir,
                                    "tokens", encoder.config)

    def _embed(self, encoded: Encoded, keep: list[np.ndarray], dtype: np.dtype) -> list[np.ndarray]:
        """Run the encoder and slice each row's kept token positions, in input order."""
        out: list[np.ndarray] = [None] * len(encoded)  # type: ignore[list-item]
        for rows, embeddings in run_batches(self.backend, encoded, self.config, self.tokenizer.pad_id):
            for i, row in enumerate(rows):
                out[row] = embeddings[i, keep[row]].astype(dtype)
        return out

    def _tokenize_queries(self, queries: Sequence[str]) -> tuple[Encoded, list[np.ndarray]]:
        """Queries' tokens and the positions that score; with query augmentation every padded slot does."""
        conv = self.conventions
        encoded = self.tokenizer.encode_texts(
            queries, self.query_max_length, prefix=conv.query_prefix, pad_to=conv.query_length,
            attend_to_padding=conv.attend_to_expansion_tokens)
        if conv.query_length is not None:
            return encoded, [np.arange(n) for n in encoded.lengths]
        return encoded, [np.flatnonzero(mask) for mask in encoded.attention_mask]

    def encode_queries(self, queries: Sequence[str]) -> list[np.ndarray]:
        """Per-query float32 (tokens, dim) matrices."""
        encoded, keep = self._tokenize_queries(queries)
        report_truncation(encoded.truncated, len(queries), "queries", self.query_max_length)
        return self._embed(encoded, keep, np.float32)

    def relevance(self, queries: Sequence[str], scores: np.ndarray) -> np.ndarray:
        """MaxSim in [0, 1]: `(1 + MaxSim / query_tokens) / 2`, monotone in MaxSim for each query.

        MaxSim sums, over the query's scoring tokens, a cosine in [-1, 1] (embeddings are L2-normalised),
        so MaxSim / query_tokens is the mean best-match cosine; the map makes it a [0, 1] score that
        compares across queries of different lengths. Raw MaxSim stays what `score_pairs` returns.
        """
        unique = list(dict.fromkeys(queries))
        counts = dict(zip(unique, (max(len(k), 1) for k in self._tokenize_queries(unique)[1])))
        tokens = np.fromiter((counts[q] for q in queries), dtype=np.float64, count=len(queries))
        return np.clip((1.0 + np.asarray(scores, dtype=np.float64) / tokens) / 2.0, 0.0, 1.0).astype(np.float32)

    def encode_documents(self, documents: Sequence[str]) -> list[np.ndarray]:
        """Per-document float16 (tokens, dim) matrices with skiplisted tokens removed, ready to index."""
        return self._encode_documents(documents)[0]

    def _encode_documents(self, documents: Sequence[str]) -> tuple[list[np.ndarray], int]:
        """Documents' token embeddings; with chunking, each document's the union of its windows' tokens."""
        chunking = chunking_of(self.config)
        prefix = self.conventions.document_prefix
        if chunking is None:
            encoded = self.tokenizer.encode_texts(documents, self.document_max_length, prefix=prefix)
            truncated = encoded.truncated
        else:
            chunked = self.tokenizer.encode_texts_chunked(documents, self.document_max_length, chunking, prefix=prefix)
            encoded, truncated = chunked.encoded, chunked.truncated
        report_truncation(truncated, len(documents), "documents", self.document_max_length)
        keep = [np.flatnonzero(~np.isin(ids, self.skip_ids)) for ids in encoded.input_ids]
        embeddings = self._embed(encoded, keep, np.float16)
        if chunking is not None:
            windows: list[list[np.ndarray]] = [[] for _ in documents]
            for owner, window in zip(chunked.owners, embeddings):
                windows[owner].append(window)
            embeddings = [np.concatenate(w) for w in windows]
        return embeddings, truncated

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> PairScores:
        """MaxSim of each pair; each distinct query is encoded once."""
        scores = np.empty(len(queries), dtype=np.float32)
        if not len(queries):
            return PairScores(scores)
        unique = list(dict.fromkeys(queries))
        query_embeddings = dict(zip(unique, self.encode_queries(unique)))
        doc_embeddings, truncated = self._encode_documents(documents)
        by_query: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            by_query.setdefault(q, []).append(i)
        for q, rows in by_query.items():
            scores[rows] = maxsim(query_embeddings[q], [doc_embeddings[r] for r in rows])
        return PairScores(scores, truncated)
