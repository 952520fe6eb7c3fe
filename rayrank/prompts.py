"""Prompts of decoder rerankers: what text surrounds each (query, document) pair, and how it is tokenized.

A prompt is a list of pieces, each tokenized on its own and concatenated, because that is what each
family's reference code does (Qwen3-Reranker: prefix, pair text, suffix; mxbai-rerank-v2 and
bge-reranker-v2-gemma: more pieces). A checkpoint's chat template is one piece: the conversation
rendered whole and tokenized whole, as `apply_chat_template` does in sentence-transformers.

Pieces mark where the query and the document go with private-use characters, so template text
holding braces or the words "query" and "document" is never mistaken for a slot. Over-long pairs
lose document tokens from inside the prompt (the query too, if it alone leaves no room): the
template's closing suffix is always kept, because the score is read at the last token.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding

from rayrank.errors import InvalidInputError, UnsupportedModelError
from rayrank.tokenize import Chunked, Chunking, Encoded, TextTokenizer

QUERY, DOCUMENT = "\ue000", "\ue001"  # slots in a piece; private-use code points no template or tokenizer uses


@dataclass(frozen=True)
class Family:
    """A built-in prompt: the documented recipe of a reranker family whose checkpoint ships no usable template.

    `pieces(instruction)` returns the pieces for an instruction (None: the family's default);
    `true_token` / `false_token` are the tokens whose logits make the score (`false_token` None: the
    score is the true token's logit alone); `names` matches the Hugging Face ids of its checkpoints.
    """

    name: str
    names: str
    model_types: tuple[str, ...]
    true_token: str
    false_token: str | None
    bos: bool
    pieces: Callable[[str | None], list[str]]


_QWEN3_SYSTEM = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
                 "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
QWEN3_DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
_MXBAI_TASK = ("You are a search relevance expert who evaluates how well documents match search queries. For each "
               "query-document pair, carefully analyze the semantic relationship between them, then provide your "
               "binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:")
_MXBAI_SYSTEM = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                 "<|im_start|>user\n")
BGE_GEMMA_DEFAULT_PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to the "
                            "query by providing a prediction of either 'Yes' or 'No'.")


def _qwen3(instruction: str | None) -> list[str]:
    # Qwen/Qwen3-Reranker-* model card: prefix, the formatted pair, suffix; each tokenized alone.
    text = f"<Instruct>: {instruction or QWEN3_DEFAULT_INSTRUCTION}\n<Query>: {QUERY}\n<Document>: {DOCUMENT}"
    return [_QWEN3_SYSTEM, text, "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"]


def _mxbai(instruction: str | None) -> list[str]:
    # mixedbread-ai/mxbai-rerank (MxbaiRerankV2.prepare_inputs): no instruction unless one is given.
    query = f"instruction: {instruction}\nquery: {QUERY}" if instruction else f"query: {QUERY}"
    suffix = "<|im_end|>\n<|im_start|>assistant\n"
    return [_MXBAI_SYSTEM, query, "\n", f"document: {DOCUMENT}", "\n", _MXBAI_TASK, suffix]


def _bge_gemma(instruction: str | None) -> list[str]:
    # BAAI/bge-reranker-v2-gemma model card (FlagEmbedding get_inputs): the instruction replaces the prompt.
    return [f"A: {QUERY}", "\n", f"B: {DOCUMENT}", "\n", instruction or BGE_GEMMA_DEFAULT_PROMPT]


# The Qwen3-Reranker prompt as a chat template over sentence-transformers' pair roles (`query`, `document`, and a
# `system` message for the instruction): saved in a tokenizer (`tokenizer.chat_template = ...`), it gives a
# Qwen3-Reranker checkpoint the model card's prompt in both sentence-transformers ≥ 5.4 and rayrank.
QWEN3_RERANKER_CHAT_TEMPLATE = (
    "{%- set ns = namespace(instruction='" + QWEN3_DEFAULT_INSTRUCTION + "') -%}"
    "{%- for m in messages if m.role == 'system' %}{% set ns.instruction = m.content %}{% endfor -%}"
    + _QWEN3_SYSTEM.replace("\n", "{{ '\\n' }}")
    + "<Instruct>: {{ ns.instruction }}{{ '\\n' }}"
    "<Query>: {{ (messages | selectattr('role', 'eq', 'query') | first).content }}{{ '\\n' }}"
    "<Document>: {{ (messages | selectattr('role', 'eq', 'document') | first).content }}"
    "<|im_end|>{{ '\\n' }}<|im_start|>assistant{{ '\\n' }}<think>{{ '\\n\\n' }}</think>{{ '\\n\\n' }}"
)

FAMILIES = {
    # Qwen/Qwen3-Reranker-0.6B, -4B, -8B
    "qwen3-reranker": Family("qwen3-reranker", r"qwen3-reranker", ("qwen3",), "yes", "no", False, _qwen3),
    # mixedbread-ai/mxbai-rerank-base-v2, mxbai-rerank-large-v2
    "mxbai-rerank-v2": Family("mxbai-rerank-v2", r"mxbai-rerank-(?:base-|large-)?v2", ("qwen2",), "1", "0", False,
                              _mxbai),
    # BAAI/bge-reranker-v2-gemma
    "bge-reranker-v2-gemma": Family("bge-reranker-v2-gemma", r"bge-reranker-v2-gemma", ("gemma",), "Yes", None, True,
                                    _bge_gemma),
}


def family_by_name(model_name: str, model_type: str) -> Family | None:
    """The family a model's *name* declares (e.g. `Qwen/Qwen3-Reranker-4B`), if its model_type is the family's.

    Both must hold: the name alone could be a fine-tune with another prompt, the type alone any chat model.
    """
    key = model_name.lower().replace("_", "-")
    for family in FAMILIES.values():
        if re.search(family.names, key) and model_type in family.model_types:
            return family
    return None


class ChatTemplate:
    """A checkpoint's chat template over sentence-transformers' pair roles: messages `query` and `document`,
    plus a `system` message holding the instruction when one is given (`CrossEncoder.predict(prompt=...)`)."""

    def __init__(self, hf_tokenizer, model_dir) -> None:
        self.hf = hf_tokenizer
        # Probe: both slots must come out once each, and texts must be inserted as given (no trimming).
        probe = self.render(None)
        if probe.count(QUERY) != 1 or probe.count(DOCUMENT) != 1:
            raise UnsupportedModelError(
                f"{model_dir}: the tokenizer's chat template does not render `query` and `document` role "
                "messages (sentence-transformers' reranker convention); name a built-in prompt with "
                f"prompt_template={sorted(FAMILIES)} or save a chat template that renders both roles.")
        verbatim = self._apply([{"role": "query", "content": " q\n"}, {"role": "document", "content": " d\n"}])
        if verbatim != probe.replace(QUERY, " q\n").replace(DOCUMENT, " d\n"):
            raise UnsupportedModelError(f"{model_dir}: the chat template changes the query or document text "
                                        "(e.g. trims it); rayrank inserts texts verbatim and cannot match it.")

    def _apply(self, messages: list[dict]) -> str:
        return self.hf.apply_chat_template(messages, tokenize=False)

    def render(self, instruction: str | None) -> str:
        messages = [{"role": "query", "content": QUERY}, {"role": "document", "content": DOCUMENT}]
        if instruction:
            messages.insert(0, {"role": "system", "content": instruction})
        try:
            return self._apply(messages)
        except Exception:  # noqa: BLE001 - a template that rejects these roles renders neither slot
            return ""

    def pieces(self, instruction: str | None) -> list[str]:
        return [self.render(instruction)]


def _span(encoding: Encoding, start: int, end: int) -> tuple[int, int]:
    """Token range of the characters [start, end): tokens that overlap it (a token straddling a border counts)."""
    offsets = encoding.offsets
    first = next((i for i, (_, e) in enumerate(offsets) if e > start), len(offsets))
    last = next((i for i, (s, _) in enumerate(offsets) if s >= end), len(offsets))
    return first, max(first, last)


@dataclass
class _Row:
    ids: list[int]
    query: tuple[int, int]
    document: tuple[int, int]


class PromptEncoder:
    """Encodes (query, document) pairs into a decoder prompt, truncating or chunking the document in place."""

    def __init__(self, tokenizer: TextTokenizer, pieces_of: Callable[[str | None], list[str]],
                 bos_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.pieces_of = pieces_of
        self.bos = [bos_id] if bos_id is not None else []

    def preview(self, instruction: str | None = None) -> str:
        """The prompt as text, `{query}` and `{document}` where the pair goes (what `rayrank check` prints)."""
        text = "".join(self.pieces_of(instruction))
        return (["<bos>"] if self.bos else [""])[0] + text.replace(QUERY, "{query}").replace(DOCUMENT, "{document}")

    def _rows(self, queries: Sequence[str], documents: Sequence[str], instruction: str | None) -> list[_Row]:
        rows = [_Row(list(self.bos), (0, 0), (0, 0)) for _ in queries]
        for piece in self.pieces_of(instruction):
            if QUERY not in piece and DOCUMENT not in piece:
                ids = self.tokenizer.encode_plain([piece])[0].ids
                for row in rows:
                    row.ids.extend(ids)
                continue
            texts, spans = [], []
            for query, document in zip(queries, documents):
                text, found, at = [], {}, 0
                for part in _split(piece):
                    value = {QUERY: query, DOCUMENT: document}.get(part, part)
                    if part in (QUERY, DOCUMENT):
                        found[part] = (at, at + len(value))
                    text.append(value)
                    at += len(value)
                texts.append("".join(text))
                spans.append(found)
            for row, encoding, found in zip(rows, self.tokenizer.encode_plain(texts), spans):
                base = len(row.ids)
                if QUERY in found:
                    start, end = _span(encoding, *found[QUERY])
                    row.query = (base + start, base + end)
                if DOCUMENT in found:
                    start, end = _span(encoding, *found[DOCUMENT])
                    row.document = (base + start, base + end)
                row.ids.extend(encoding.ids)
        return rows

    def encode(self, queries: Sequence[str], documents: Sequence[str], max_length: int,
               instruction: str | None = None, chunking: Chunking | None = None) -> Encoded | Chunked:
        """Rows of at most `max_length` tokens: documents cut inside the prompt (or cut into windows with
        `chunking`, one row per window, `Chunked.owners` naming the pair)."""
        ids, owners, truncated = [], [], 0
        for i, row in enumerate(self._rows(queries, documents, instruction)):
            row, query_cut = _fit_query(row, max_length)
            start, end = row.document
            room = max_length - (len(row.ids) - (end - start))
            windows, cut = _windows(end - start, room, chunking)
            truncated += cut or query_cut
            for a, b in windows:
                ids.append(row.ids[:start] + row.ids[start + a:start + b] + row.ids[end:])
                owners.append(i)
        encoded = Encoded(ids, [[0] * len(r) for r in ids], [[1] * len(r) for r in ids], truncated)
        if chunking is None:
            return encoded
        encoded.truncated = 0
        return Chunked(encoded, np.array(owners, dtype=np.int64), truncated)


def _split(piece: str) -> list[str]:
    parts, current = [], []
    for char in piece:
        if char in (QUERY, DOCUMENT):
            parts.extend(["".join(current), char])
            current = []
        else:
            current.append(char)
    return [*parts, "".join(current)]


def _fit_query(row: _Row, max_length: int) -> tuple[_Row, bool]:
    """The row with its query cut to half of what the prompt leaves, when it is longer than that (and whether
    it was cut): a query must leave room for the document, as `TextTokenizer.encode_pairs` does."""
    start, end = row.query
    others = len(row.ids) - (end - start) - (row.document[1] - row.document[0])
    if others + 2 > max_length:
        raise InvalidInputError(f"the prompt alone takes {others} tokens, too many for max_length={max_length}; "
                                "raise max_length or shorten the instruction.")
    keep = (max_length - others) // 2
    if end - start <= keep or end - start + row.document[1] - row.document[0] + others <= max_length:
        return row, False
    drop = end - start - keep
    shift = lambda span: (span[0] - drop, span[1] - drop) if span[0] >= end else span
    return _Row(row.ids[:start + keep] + row.ids[end:], (start, start + keep), shift(row.document)), True


def _windows(length: int, room: int, chunking: Chunking | None) -> tuple[list[tuple[int, int]], bool]:
    """Token windows of a document of `length` tokens given `room`: the first `room` tokens (truncation), or
    overlapping windows as `Chunking.windows` cuts them."""
    if chunking is None:
        return [(0, min(length, room))], length > room
    size = max(1, min(chunking.tokens or room, room))
    if length <= size:
        return [(0, length)], False
    step = size - min(chunking.overlap, size - 1)
    starts = range(0, length - size + step, step)
    windows = [(s, min(s + size, length)) for s in starts]
    return windows[: chunking.max_chunks], len(windows) > chunking.max_chunks
