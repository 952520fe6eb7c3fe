"""The `llm` funnel stage: listwise reranking by an OpenAI-compatible chat-completions endpoint.

Any server speaking `POST {url}/chat/completions` works (vLLM's OpenAI server, Ray Serve LLM, a hosted
API). The answer is constrained by a JSON schema (`response_format: json_schema`) to the window's
document ids; lists longer than `window` are ordered by sliding windows from the bottom up, `stride`
apart, as RankLLM does, so the best documents bubble to the top. A bad answer (missing, duplicate or
unknown ids) is repaired: known ids first in the model's order, the missing ones after them in their
earlier order. Any failure (timeout, HTTP error, unreadable answer) returns the previous order with the
reason, and stops calling: a server that is down costs one timeout, not one per window.

The API key is read from the environment variable `api_key_env` at call time and sent only as
`Authorization: Bearer`; it is never part of the settings, a log line or an error message.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, field_validator, model_validator

from rayrank.config import StrictModel

log = logging.getLogger(__name__)

SYSTEM_PROMPT = ("You are a search relevance expert. You rank documents by how well they answer the query, "
                 "most relevant first.")
FAILURES = ("timeout", "connection", "http_status", "malformed_answer")


class LlmSettings(StrictModel):
    """Where the listwise model runs and how it is asked.

    `url` is the API's base URL, e.g. `http://127.0.0.1:8000/v1` (vLLM's `vllm serve MODEL`), to which
    `/chat/completions` is appended. `timeout_s` bounds each call from connect to the last byte.
    """

    url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    window: PositiveInt = 20
    stride: PositiveInt = 10
    timeout_s: PositiveFloat = 30.0
    max_document_chars: PositiveInt = 2000
    temperature: NonNegativeFloat = 0.0
    max_tokens: PositiveInt | None = Field(None, description="cap on the answer's tokens (default: the server's)")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) base URL like http://127.0.0.1:8000/v1, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _stride_within_window(self) -> LlmSettings:
        if self.stride > self.window:
            raise ValueError(f"stride: at most window ({self.window}), or documents between windows are never "
                             f"ranked; got {self.stride}")
        return self


@dataclass(frozen=True)
class LlmOutcome:
    """`order`: every input id, best first. `failure`: one of FAILURES when the previous order was kept.

    `calls` counts requests sent (the failed one included); `repaired` counts answers that needed repair.
    """

    order: list[str]
    failure: str | None
    calls: int
    repaired: int


class LlmCallError(Exception):
    """One call failed; `kind` is one of FAILURES, the message says what happened (never the key)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def windows(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """The `[start, end)` slices RankLLM ranks, bottom window first; the last one starts at 0.

    Example:
        >>> windows(50, 20, 10)
        [(30, 50), (20, 40), (10, 30), (0, 20)]
        >>> windows(25, 20, 10), windows(7, 20, 10), windows(0, 20, 10)
        ([(5, 25), (0, 15)], [(0, 7)], [])
    """
    out: list[tuple[int, int]] = []
    start, end = n - window, n
    while end > 0:
        out.append((max(start, 0), end))
        if start <= 0:
            break
        start, end = start - stride, end - stride
    return out


def repair(answer: list[Any], ids: list[str]) -> tuple[list[str], bool]:
    """The answer's known ids (first occurrence), then the missing ones in their earlier order.

    Example:
        >>> repair(["c", "x", "a", "c"], ["a", "b", "c"])
        (['c', 'a', 'b'], True)
        >>> repair(["b", "a"], ["a", "b"])
        (['b', 'a'], False)
    """
    known = set(ids)
    seen: dict[str, None] = {}
    for item in answer:
        if isinstance(item, str) and item in known:
            seen.setdefault(item, None)
    order = list(seen) + [i for i in ids if i not in seen]
    return order, len(answer) != len(ids) or len(seen) != len(ids)


def response_format(ids: list[str]) -> dict[str, Any]:
    """A strict JSON schema: an object whose `ranking` lists the window's ids (enum), each once."""
    schema = {"type": "object", "additionalProperties": False, "required": ["ranking"],
              "properties": {"ranking": {"type": "array", "items": {"type": "string", "enum": ids},
                                         "minItems": len(ids), "maxItems": len(ids)}}}
    return {"type": "json_schema", "json_schema": {"name": "ranking", "strict": True, "schema": schema}}


class ListwiseReranker:
    """Orders a query's documents with an OpenAI-compatible chat model (see the module docstring).

    Example:
        >>> reranker = ListwiseReranker(LlmSettings(url="http://127.0.0.1:9/v1", model="m", timeout_s=0.5))
        >>> outcome = reranker.rerank("q", ["a", "b"], ["text a", "text b"])  # nothing listens on port 9
        >>> outcome.order, outcome.failure, outcome.calls
        (['a', 'b'], 'connection', 1)
    """

    def __init__(self, settings: LlmSettings) -> None:
        self.settings = settings
        parts = urlsplit(settings.url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._path = parts.path.rstrip("/") + "/chat/completions"

    def rerank(self, query: str, doc_ids: list[str], texts: list[str]) -> LlmOutcome:
        """Every id of `doc_ids` (given best first by the previous stage), reordered best first."""
        if len(doc_ids) != len(texts):
            raise ValueError(f"doc_ids and texts must have the same length, got {len(doc_ids)} and {len(texts)}.")
        if len(set(doc_ids)) != len(doc_ids):
            raise ValueError("doc_ids must be unique: the model answers with ids.")
        order, text_of = list(doc_ids), dict(zip(doc_ids, texts))
        calls = repaired = 0
        for start, end in windows(len(order), self.settings.window, self.settings.stride):
            if end - start < 2:
                continue
            calls += 1
            try:
                answer = self._ask(query, order[start:end], text_of)
            except LlmCallError as exc:
                log.warning("LLM listwise reranking failed (%s: %s); keeping the previous order", exc.kind, exc)
                return LlmOutcome(list(doc_ids), exc.kind, calls, repaired)
            window_order, fixed = repair(answer, order[start:end])
            repaired += fixed
            order[start:end] = window_order
        return LlmOutcome(order, None, calls, repaired)

    def messages(self, query: str, ids: list[str], text_of: dict[str, str]) -> list[dict[str, str]]:
        """The chat: documents as `[id] text` lines (cut to `max_document_chars`), then the instruction."""
        limit = self.settings.max_document_chars
        lines = "\n".join(f"[{i}] {' '.join(text_of[i][:limit].split())}" for i in ids)
        user = (f"Query: {query}\n\nDocuments:\n{lines}\n\nRank all {len(ids)} documents by relevance to the query, "
                'most relevant first. Answer with JSON {"ranking": [ids]} listing every id exactly once.')
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    def _ask(self, query: str, ids: list[str], text_of: dict[str, str]) -> list[Any]:
        settings = self.settings
        body: dict[str, Any] = {"model": settings.model, "messages": self.messages(query, ids, text_of),
                                "temperature": settings.temperature, "response_format": response_format(ids)}
        if settings.max_tokens is not None:
            body["max_tokens"] = settings.max_tokens
        status, raw = self._post(json.dumps(body).encode())
        if status != 200:
            raise LlmCallError("http_status", f"HTTP {status} from {settings.url}: {raw[:200]!r}")
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
            answer = json.loads(content)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LlmCallError("malformed_answer", f"unreadable answer ({type(exc).__name__}): {raw[:200]!r}")
        if isinstance(answer, dict):
            answer = answer.get("ranking")
        if not isinstance(answer, list):
            raise LlmCallError("malformed_answer", f"expected a list of ids under 'ranking', got {content[:200]!r}")
        return answer

    def _post(self, body: bytes) -> tuple[int, bytes]:
        """One POST with a deadline of `timeout_s` from connect to the last byte of the answer."""
        timeout = self.settings.timeout_s
        deadline = time.monotonic() + timeout
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.settings.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = kind(self._host, self._port, timeout=timeout)
        try:
            conn.request("POST", self._path, body, headers)
            sock = conn.sock  # kept: the connection hands it to the response when the server closes it

            def remaining() -> float:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                return left

            remaining()
            response = conn.getresponse()
            chunks = []
            while remaining() and (chunk := response.read1(65536)):
                chunks.append(chunk)
            return response.status, b"".join(chunks)
        except TimeoutError:
            raise LlmCallError("timeout", f"no complete answer from {self.settings.url} within {timeout:g}s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise LlmCallError("connection", f"{type(exc).__name__} talking to {self.settings.url}: {exc}") from None
        finally:
            conn.close()
