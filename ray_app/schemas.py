"""HTTP request and response models: Cohere's `/v1/rerank` and TEI's `/rerank`.

Types and fixed rules live in the models (FastAPI validates them and documents them in `/docs`);
the configurable limits (`RequestLimits`) are checked by `check_limits`, which names the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, StrictBool, StrictStr, field_validator

from rayrank.ray_app.config import RequestLimits
from rayrank.validate import text_problem


class RequestError(Exception):
    """A request the service refuses: rendered as `{"error": {"type", "message", "field"}}`."""

    def __init__(self, status: int, field: str | None, message: str, kind: str = "invalid_request",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.status, self.field, self.message, self.kind, self.headers = status, field, message, kind, headers

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.kind, "message": str(self), "field": self.field}}


class ErrorDetail(BaseModel):
    type: str = Field(description="what went wrong, e.g. invalid_request, unauthorized, overloaded")
    message: str
    field: str | None = Field(description="the request field at fault (`documents[2]`, `top_n`), if one is")


class ErrorResponse(BaseModel):
    """The body of every refusal (4xx, 503)."""

    error: ErrorDetail


@dataclass(frozen=True)
class DocumentId:
    """A document given as `{"id": ...}`: its token embeddings are read from the service's index."""

    id: str


def _documents_of(values: list[Any], by_id: bool) -> list[str | DocumentId]:
    """Strings, Cohere's `{"text": ...}` objects and (`by_id`) `{"id": ...}`; name the first bad position."""
    shapes = '{"text": string}' + (' or {"id": string}' if by_id else "")
    out: list[str | DocumentId] = []
    for i, value in enumerate(values):
        if isinstance(value, dict):
            if by_id and set(value) == {"id"}:
                if not isinstance(value["id"], str) or not value["id"]:
                    raise ValueError(f"document at index {i}: id must be a non-empty string")
                out.append(DocumentId(value["id"]))
                continue
            if set(value) != {"text"}:
                raise ValueError(f"document at index {i} must be a string or {shapes}, "
                                 f"got an object with keys {sorted(value)}")
            value = value["text"]
        problem = text_problem(value)
        if problem is not None:
            raise ValueError(f"document at index {i} {problem}; expected a non-empty string")
        out.append(value)
    return out


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: StrictStr

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query is empty; expected a non-empty string")
        return value


class CohereRerankRequest(_Request):
    """Cohere Rerank v2: documents as strings or `{"text": ...}`; results best first."""

    documents: list[Any] = Field(min_length=1, description='strings, objects {"text": string}, or (when the '
                                 'service loads an index) {"id": doc_id}')
    top_n: PositiveInt | None = None
    return_documents: StrictBool = False
    model: StrictStr | None = None
    max_tokens_per_doc: PositiveInt | None = None

    @field_validator("documents")
    @classmethod
    def _documents(cls, value: list[Any]) -> list[str | DocumentId]:
        return _documents_of(value, by_id=True)


class TeiRerankRequest(_Request):
    """Hugging Face TEI `/rerank`. `raw_scores: false` maps cross-encoder logits to probabilities."""

    texts: list[Any] = Field(min_length=1)
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool = True

    @field_validator("texts")
    @classmethod
    def _texts(cls, value: list[Any]) -> list[str]:
        return _documents_of(value, by_id=False)  # type: ignore[return-value]


def check_limits(query: str, documents: list[str | DocumentId], limits: RequestLimits, documents_field: str) -> None:
    """The configurable limits, each failure a 422 naming the field."""
    if len(documents) > limits.max_documents:
        raise RequestError(422, documents_field, f"{len(documents)} documents; at most {limits.max_documents} "
                           "per request (split the request)", kind="too_many_documents")
    if len(query) > limits.max_query_chars:
        raise RequestError(422, "query", f"{len(query)} characters; at most {limits.max_query_chars}",
                           kind="query_too_long")
    for i, text in enumerate(documents):
        if isinstance(text, str) and len(text) > limits.max_document_chars:
            raise RequestError(422, f"{documents_field}[{i}]", f"{len(text)} characters; at most "
                               f"{limits.max_document_chars} per document", kind="document_too_long")


class CohereResult(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, str] | None = None  # {"text": ...}, or {"id": ...} for a document given by id


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereResult]
    meta: dict[str, Any]


class TeiResult(BaseModel):
    index: int
    score: float
    text: str | None = None


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    owned_by: str = "rayrank"
    scorer: str
    source: str


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]
