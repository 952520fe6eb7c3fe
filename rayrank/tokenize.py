"""Tokenization without padding: pairs for cross-encoders, single texts for late interaction.

We drive the Rust `tokenizers` object directly: it encodes a whole list in parallel, reports which
rows were truncated (`overflowing`), and leaves padding to the batch planner, which pads each batch
only to its own longest row.

A `TextTokenizer` may be called from several threads at once (a job actor tokenizes the next shard
while the model scores this one): truncation is state on the Rust object, so each thread encodes
with a copy of its own, and two shards tokenize on two cores at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from rayrank.batching import pad

logger = logging.getLogger(__name__)


@dataclass
class Encoded:
    """Unpadded token ids of many rows, plus how many of them were truncated."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    attention_mask: list[list[int]]
    truncated: int = 0
    lengths: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.lengths = np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, rows: np.ndarray, pad_id: int = 0) -> dict[str, np.ndarray]:
        """Padded int64 model inputs for `rows` (padded to the longest of those rows only)."""
        return {
            "input_ids": pad([self.input_ids[r] for r in rows], pad_id),
            "attention_mask": pad([self.attention_mask[r] for r in rows], 0),
            "token_type_ids": pad([self.token_type_ids[r] for r in rows], 0),
        }


@dataclass
class Chunked:
    """Rows that are chunks of longer texts: `owners[row]` is the text (or pair) the row came from.

    `truncated` counts texts that still did not fit in `max_chunks_per_doc` chunks.
    """

    encoded: Encoded
    owners: np.ndarray
    truncated: int


@dataclass(frozen=True)
class Chunking:
    """How a long document is cut: windows of `tokens` document tokens overlapping by `overlap`."""

    tokens: int | None
    overlap: int
    max_chunks: int

    def windows(self, document: Encoding, room: int) -> tuple[list[Encoding], bool]:
        """The document's windows (at most `max_chunks`, each ≤ min(tokens, room)); True if some was cut off."""
        size = max(1, min(self.tokens or room, room))
        if len(document.ids) <= size:
            return [document], False
        stride = min(self.overlap, size - 1)
        document.truncate(size, stride=stride)
        windows = [document, *document.overflowing]
        return windows[: self.max_chunks], len(windows) > self.max_chunks


def _collect(encodings: Sequence[Encoding], count_truncated: bool = True) -> Encoded:
    return Encoded(
        input_ids=[e.ids for e in encodings],
        token_type_ids=[e.type_ids for e in encodings],
        attention_mask=[e.attention_mask for e in encodings],
        truncated=sum(1 for e in encodings if e.overflowing) if count_truncated else 0,
    )


class _ThreadCopy(threading.local):
    """One thread's Rust tokenizer, its truncation setting, and the JSON it was built from."""

    tok: Tokenizer | None = None
    truncation: tuple[int, str] | None = None
    source: str | None = None


class TextTokenizer:
    """A model's fast tokenizer configured for unpadded, truncating encoding.

    Args:
        model_dir: a directory holding `tokenizer.json` (or anything `AutoTokenizer` can load).
    """

    def __init__(self, model_dir: str | Path) -> None:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        if not getattr(hf, "is_fast", False):
            raise ValueError(f"{model_dir}: rayrank needs a fast (Rust) tokenizer with a tokenizer.json.")
        # Each thread's copy is built from this (see `_tok`): truncation settings are state on the Rust object.
        tok = Tokenizer.from_str(hf.backend_tokenizer.to_str())
        tok.no_padding()
        self._json = tok.to_str()
        self._local = _ThreadCopy()
        self.pad_id = hf.pad_token_id if hf.pad_token_id is not None else 0
        self.mask_id = hf.mask_token_id
        self.model_max_length = hf.model_max_length
        self.vocab = hf.get_vocab()
        # BERT reads segment ids; tokenizers that do not emit them (RoBERTa, ...) must not be fed any.
        self.uses_token_types = "token_type_ids" in hf.model_input_names

    @property
    def _tok(self) -> Tokenizer:
        """The calling thread's Rust tokenizer, rebuilt when `add_markers` changed the vocabulary."""
        local = self._local
        if local.source is not self._json:
            local.tok, local.truncation, local.source = Tokenizer.from_str(self._json), None, self._json
        return local.tok

    def _truncate(self, max_length: int, strategy: str) -> None:
        tok = self._tok
        if self._local.truncation != (max_length, strategy):
            tok.enable_truncation(max_length, strategy=strategy)
            self._local.truncation = (max_length, strategy)

    def _encode(self, inputs: list, max_length: int, strategy: str) -> list[Encoding]:
        """Model inputs, truncated; without character offsets (nothing downstream reads them; ~10% faster)."""
        self._truncate(max_length, strategy)
        return self._tok.encode_batch_fast(inputs)

    def _whole(self, texts: Sequence[str]) -> list[Encoding]:
        """Texts encoded in full, without special tokens (the material chunks and cuts are made of)."""
        self._tok.no_truncation()
        self._local.truncation = None
        return self._tok.encode_batch(list(texts), add_special_tokens=False)

    def encode_plain(self, texts: Sequence[str]) -> list[Encoding]:
        """Texts encoded in full, without special tokens, with character offsets (decoder prompt pieces)."""
        return self._whole(texts)

    def cut_texts(self, texts: Sequence[str], max_tokens: int) -> list[str]:
        """Each text cut after its first `max_tokens` tokens, where that token ends (Cohere's `max_tokens_per_doc`)."""
        out = []
        for text, encoding in zip(texts, self._whole(texts)):
            offsets = encoding.offsets
            out.append(text if len(offsets) <= max_tokens else text[: offsets[max_tokens - 1][1]])
        return out

    def encode_pairs_chunked(self, queries: Sequence[str], documents: Sequence[str], max_length: int,
                             chunking: Chunking) -> Chunked:
        """(query, chunk) pairs: each document cut into windows that fit beside its query in `max_length`."""
        special = self._tok.num_special_tokens_to_add(True)
        unique = list(dict.fromkeys(queries))
        query_tokens = dict(zip(unique, self._whole(unique)))
        encodings, owners, truncated = [], [], 0
        for i, (query, document) in enumerate(zip(queries, self._whole(documents))):
            q = query_tokens[query]
            if len(q.ids) > max_length // 2:  # a query that leaves no room is cut, as encode_pairs does
                q = self._tok.encode(query, add_special_tokens=False)
                q.truncate(max_length // 2)
            windows, cut = chunking.windows(document, max_length - special - len(q.ids))
            truncated += cut
            encodings.extend(self._tok.post_process(q, w) for w in windows)
            owners.extend([i] * len(windows))
        return Chunked(_collect(encodings, count_truncated=False), np.array(owners, dtype=np.int64), truncated)

    def encode_texts_chunked(self, texts: Sequence[str], max_length: int, chunking: Chunking, *,
                             prefix: str = "") -> Chunked:
        """Single texts cut into windows of at most `max_length` tokens each (markers and specials included)."""
        marker = self._tok.encode(prefix.strip(), add_special_tokens=False) if prefix.strip() else None
        room = max_length - self._tok.num_special_tokens_to_add(False) - (len(marker.ids) if marker else 0)
        encodings, owners, truncated = [], [], 0
        for i, text in enumerate(self._whole(texts)):
            windows, cut = chunking.windows(text, room)
            truncated += cut
            for window in windows:
                merged = Encoding.merge([marker, window], growing_offsets=True) if marker else window
                encodings.append(self._tok.post_process(merged))
            owners.extend([i] * len(windows))
        return Chunked(_collect(encodings, count_truncated=False), np.array(owners, dtype=np.int64), truncated)

    def encode_pairs(self, queries: Sequence[str], documents: Sequence[str], max_length: int) -> Encoded:
        """Encode (query, document) pairs, truncating the document only.

        A query too long to leave room for any document is truncated too (longest-first): the
        cross-encoder cannot read more than `max_length` tokens either way, and it is counted.
        """
        pairs = list(zip(queries, documents, strict=True))
        try:
            return _collect(self._encode(pairs, max_length, "only_second"))
        except Exception:
            # The Rust tokenizer fails the whole batch when one query alone exceeds max_length.
            encodings = []
            for pair in pairs:
                try:
                    self._truncate(max_length, "only_second")
                    encodings.append(self._tok.encode(*pair))
                except Exception:
                    self._truncate(max_length, "longest_first")
                    encodings.append(self._tok.encode(*pair))
            return _collect(encodings)

    def encode_texts(
        self,
        texts: Sequence[str],
        max_length: int,
        *,
        prefix: str = "",
        pad_to: int | None = None,
        attend_to_padding: bool = False,
    ) -> Encoded:
        """Encode single texts, e.g. ColBERT queries or documents.

        Args:
            prefix: prepended to every text (ColBERT's `[Q] `/`[D] ` marker, placed after `[CLS]`).
            pad_to: pad with the mask token up to this many tokens (ColBERT query augmentation).
            attend_to_padding: whether those mask tokens take part in attention.
        """
        encoded = _collect(self._encode([prefix + t for t in texts] if prefix else list(texts), max_length,
                                        "longest_first"))
        if pad_to is not None and self.mask_id is not None:
            fill = 1 if attend_to_padding else 0
            for ids, types, mask in zip(encoded.input_ids, encoded.token_type_ids, encoded.attention_mask):
                extra = pad_to - len(ids)
                if extra > 0:
                    ids.extend([self.mask_id] * extra)
                    types.extend([0] * extra)
                    mask.extend([fill] * extra)
            encoded.__post_init__()
        return encoded

    def add_markers(self, markers: Sequence[str]) -> None:
        """Make ColBERT markers (`[Q]`, `[unused0]`, ...) single tokens, as PyLate does, never split."""
        from tokenizers import AddedToken

        tokens = [AddedToken(m.strip(), special=True, normalized=False) for m in markers if m.strip()]
        if tokens:
            tok = Tokenizer.from_str(self._json)
            tok.add_special_tokens(tokens)
            self._json = tok.to_str()
            self.vocab = tok.get_vocab(with_added_tokens=True)

    def token_ids(self, words: Sequence[str]) -> set[int]:
        """Vocabulary ids of single-token words (e.g. punctuation for the ColBERT skiplist)."""
        return {self.vocab[w] for w in words if w in self.vocab}
