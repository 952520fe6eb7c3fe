"""Late-interaction (ColBERT-style) scorer: per-token embeddings and MaxSim.

Works with any BERT-family or ModernBERT encoder. The checkpoint's layout (`colbert_formats`: PyLate,
Stanford ColBERT, or a plain encoder) sets the projection and the ColBERT conventions: a marker token
after `[CLS]`, queries padded with `[MASK]` to `query_length`, and a punctuation skiplist applied to
documents. A plain encoder (e.g. all-MiniLM-L6-v2) scores its real tokens only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rayrank.config import EngineConfig
from rayrank.errors import UnsupportedModelError
from rayrank.scoring.base import PairScores, attention_for, chunking_of, make_backend, report_truncation, run_batches
from rayrank.scoring.colbert_formats import marker_id, read_checkpoint, with_marker
from rayrank.scoring.cross_encoder import model_max_length
from rayrank.tokenize import Encoded, TextTokenizer

logger = logging.getLogger(__name__)


def _max_seq_length(model_dir: Path) -> int | None:
    path = model_dir / "sentence_bert_config.json"
    return json.loads(path.read_text()).get("max_seq_length") if path.is_file() else None


class _TokenEmbeddings(torch.nn.Module):
    """Encoder → optional projection → L2-normalised token embeddings (rows, tokens, dim)."""

    def __init__(self, encoder: torch.nn.Module, projection: torch.nn.Module | None, uses_token_types: bool) -> None:
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
        from transformers import AutoConfig, AutoModel

        attn = attention_for(AutoConfig.from_pretrained(str(model_dir), local_files_only=True), config.backend)
        encoder = AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation=attn)
        self.tokenizer = TextTokenizer(model_dir)
        checkpoint = read_checkpoint(model_dir, encoder)
        self.conventions = conv = checkpoint.conventions
        self.query_marker = marker_id(self.tokenizer.vocab, conv.query_prefix, model_dir)
        self.document_marker = marker_id(self.tokenizer.vocab, conv.document_prefix, model_dir)
        if conv.do_query_expansion and self.tokenizer.mask_id is None:
            raise UnsupportedModelError(f"{model_dir}: query augmentation pads with [MASK], and this tokenizer has "
                                        "no mask token; set do_query_expansion false in "
                                        "config_sentence_transformers.json if the model was trained without it.")
        # A marker written in a text stays one token, as PyLate's add_tokens makes it; never a new id.
        self.tokenizer.add_markers([m for m in (conv.query_prefix, conv.document_prefix)
                                    if m.strip() in self.tokenizer.vocab])
        # The user's length wins, then ColBERT's document length (PyLate saves the tokenizer one token shorter).
        if config.max_length is not None or conv.document_length:
            self.document_max_length = model_max_length(encoder.config, self.tokenizer,
                                                        config.max_length or conv.document_length)
        else:
            limit = model_max_length(encoder.config, self.tokenizer)
            self.document_max_length = min(_max_seq_length(model_dir) or limit, limit)
        self.query_max_length = model_max_length(encoder.config, self.tokenizer, config.query_max_length
                                                 or conv.query_length or self.document_max_length)
        self.skip_ids = np.array(sorted(self.tokenizer.token_ids(conv.skiplist_words)), dtype=np.int64)
        projection = checkpoint.projection
        self.dim = projection[-1].out_features if projection is not None else encoder.config.hidden_size
        self.config = config
        uses_types = self.tokenizer.uses_token_types and getattr(encoder.config, "type_vocab_size", 0) > 1
        # The layout is in the export key: an ONNX file from before a layout was read right is not reused.
        self.backend = make_backend(config, _TokenEmbeddings(encoder, projection, uses_types), model_dir,
                                    f"tokens-{conv.layout}", encoder.config)

    def _texts(self, texts: Sequence[str]) -> list[str]:
        """Texts as PyLate's sentence-transformers hands them to the tokenizer: stripped (a leading space is a
        token of its own to byte-level BPE, e.g. ModernBERT), lowercased under do_lower_case."""
        if self.conventions.layout != "plain":
            texts = [t.strip() for t in texts]
        return [t.lower() for t in texts] if self.conventions.lowercase else list(texts)

    def _embed(self, encoded: Encoded, keep: list[np.ndarray], dtype: np.dtype) -> list[np.ndarray]:
        """Run the encoder and slice each row's kept token positions, in input order."""
        out: list[np.ndarray] = [None] * len(encoded)  # type: ignore[list-item]
        for rows, embeddings in run_batches(self.backend, encoded, self.config, self.tokenizer.pad_id):
            for i, row in enumerate(rows):
                out[row] = embeddings[i, keep[row]].astype(dtype)
        return out

    def _tokenize_queries(self, queries: Sequence[str]) -> tuple[Encoded, list[np.ndarray]]:
        """Queries' tokens and the positions that score; with query augmentation every padded slot does.

        As PyLate and Stanford ColBERT: cut one token short of the length, pad with [MASK], insert the marker.
        """
        conv, marked = self.conventions, self.query_marker is not None
        pad_to = conv.query_length - marked if conv.do_query_expansion else None
        encoded = with_marker(self.tokenizer.encode_texts(
            self._texts(queries), self.query_max_length - marked, pad_to=pad_to,
            attend_to_padding=conv.attend_to_expansion_tokens), self.query_marker)
        if conv.do_query_expansion:
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

    def encode_documents(self, documents: Sequence[str], dtype: np.dtype = np.float16) -> list[np.ndarray]:
        """Per-document (tokens, dim) matrices with skiplisted tokens removed.

        float16 (the default) is what indexes store and `rerank --index` scores with; float32 is the encoder's
        output unrounded, what `score_pairs` scores with (so it matches PyLate's scores within 1e-4).
        """
        return self._encode_documents(documents, dtype)[0]

    def _encode_documents(self, documents: Sequence[str], dtype: np.dtype = np.float16
                          ) -> tuple[list[np.ndarray], int]:
        """Documents' token embeddings; with chunking, each document's the union of its windows' tokens."""
        chunking = chunking_of(self.config)
        texts, room = self._texts(documents), self.document_max_length - (self.document_marker is not None)
        if chunking is None:
            encoded = self.tokenizer.encode_texts(texts, room)
            truncated = encoded.truncated
        else:
            chunked = self.tokenizer.encode_texts_chunked(texts, room, chunking)
            encoded, truncated = chunked.encoded, chunked.truncated
        encoded = with_marker(encoded, self.document_marker)
        report_truncation(truncated, len(documents), "documents", self.document_max_length)
        keep = [np.flatnonzero(~np.isin(ids, self.skip_ids)) for ids in encoded.input_ids]
        embeddings = self._embed(encoded, keep, dtype)
        if chunking is not None:
            windows: list[list[np.ndarray]] = [[] for _ in documents]
            for owner, window in zip(chunked.owners, embeddings):
                windows[owner].append(window)
            embeddings = [np.concatenate(w) for w in windows]
        return embeddings, truncated

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> PairScores:
        """MaxSim of each pair over float32 embeddings; each distinct query is encoded once.

        Documents stay float32 here (rounding to an index's float16 moves a MaxSim by up to ~1e-3)."""
        scores = np.empty(len(queries), dtype=np.float32)
        if not len(queries):
            return PairScores(scores)
        unique = list(dict.fromkeys(queries))
        query_embeddings = dict(zip(unique, self.encode_queries(unique)))
        doc_embeddings, truncated = self._encode_documents(documents, np.float32)
        by_query: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            by_query.setdefault(q, []).append(i)
        for q, rows in by_query.items():
            scores[rows] = maxsim(query_embeddings[q], [doc_embeddings[r] for r in rows])
        return PairScores(scores, truncated)
