"""HTTP request and response models: Cohere's `/v1/rerank` and `/v2/rerank`, TEI's `/rerank`.

Types and fixed rules live in the models (FastAPI validates them and documents them in `/docs`);
the configurable limits (`RequestLimits`) are checked by `check_limits`, which names the field, and
`constrain_openapi` writes them, with the rules the validators enforce, into the OpenAPI document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictStr, field_validator

from rayrank.ray_app.config import RequestLimits
from rayrank.validate import NON_BLANK_PATTERN, text_problem


def _whole(value: Any) -> Any:
    """JSON Schema's integer: 3 and 3.0, not true or "3" (which pydantic's lax mode would take)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# 1 to 2**31 - 1: counts a request may carry (top_n, max_tokens_per_doc), bounded as the schema says.
Count = Annotated[int, Field(ge=1, le=2**31 - 1), BeforeValidator(_whole)]


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


# What every text field takes (rayrank.validate): white space is what Python's str.isspace says it is.
_EXPECTED = "expected a string with a character that is not white space"


@dataclass(frozen=True)
class DocumentId:
    """A document given as `{"id": ...}`: its token embeddings are read from the service's index."""

    id: str


def _documents_of(values: list[Any]) -> list[str | DocumentId]:
    """Strings, Cohere's `{"text": ...}` objects and `{"id": ...}`; name the first bad position."""
    out: list[str | DocumentId] = []
    for i, value in enumerate(values):
        if isinstance(value, dict):
            if set(value) == {"id"}:
                if not isinstance(value["id"], str) or not value["id"]:
                    raise ValueError(f"document at index {i}: id must be a non-empty string")
                out.append(DocumentId(value["id"]))
                continue
            if set(value) != {"text"}:
                raise ValueError(f"document at index {i} must be a string, {{'text': string}} or {{'id': string}}, "
                                 f"got an object with keys {sorted(value)}")
            value = value["text"]
        _check_document(i, value)
        out.append(value)
    return out


def _check_document(i: int, value: Any) -> None:
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(f"document at index {i} {problem}; {_EXPECTED}")


def _strings_of(values: list[Any]) -> list[str]:
    """Strings with a character that is not white space only (Cohere v2, TEI); name the first bad position."""
    for i, value in enumerate(values):
        _check_document(i, value)
    return values


class _Request(BaseModel):
    # strict: JSON types as the schema states them (no "3" or true for an integer, as lax mode allows)
    model_config = ConfigDict(extra="forbid", strict=True)

    query: StrictStr = Field(json_schema_extra={"minLength": 1, "pattern": NON_BLANK_PATTERN},
                             description="a string with a character that is not white space")

    instruction: StrictStr | None = Field(None, description="decoder rerankers only (Qwen3-Reranker, ...): the "
                                          "task instruction for this request, in place of the service's")

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, value: str) -> str:
        problem = text_problem(value)
        if problem is not None:
            raise ValueError(f"query {problem}; {_EXPECTED}")
        return value

    @field_validator("instruction")
    @classmethod
    def _instruction_not_blank(cls, value: str | None) -> str | None:
        if value is not None and (problem := text_problem(value)) is not None:
            raise ValueError(f"instruction {problem}; {_EXPECTED}")
        return value


class CohereRerankRequest(_Request):
    """Cohere Rerank v1: documents as strings or `{"text": ...}`; results best first."""

    documents: list[Any] = Field(min_length=1, description='strings, objects {"text": string}, or (when the '
                                 'service loads an index) {"id": doc_id}')
    top_n: Count | None = None
    return_documents: StrictBool = False
    model: StrictStr | None = None
    max_tokens_per_doc: Count | None = Field(None, description="cut each document after this many tokens")

    @field_validator("documents")
    @classmethod
    def _documents(cls, value: list[Any]) -> list[str | DocumentId]:
        return _documents_of(value)


class CohereV2RerankRequest(_Request):
    """Cohere Rerank v2 (`ClientV2.rerank`): documents as strings; results best first, without documents."""

    documents: list[Any] = Field(min_length=1, description="strings")
    top_n: Count | None = None
    model: StrictStr | None = None
    max_tokens_per_doc: Count | None = Field(None, description="cut each document after this many tokens")
    priority: Annotated[int, Field(ge=0, le=2**31 - 1), BeforeValidator(_whole)] | None = Field(
        None, description="accepted as the SDK sends it; requests are served in arrival order")

    @field_validator("documents")
    @classmethod
    def _documents(cls, value: list[Any]) -> list[str]:
        return _strings_of(value)


class TeiRerankRequest(_Request):
    """Hugging Face TEI `/rerank`. `raw_scores: false` maps cross-encoder logits to probabilities."""

    texts: list[Any] = Field(min_length=1)
    raw_scores: StrictBool = Field(False, description="cross-encoder logits or raw MaxSim instead of [0, 1] scores")
    return_text: StrictBool = False
    truncate: StrictBool = Field(True, description="only true: texts over the model's length are truncated "
                                 "(or chunked, with engine.long_documents: chunk)")

    @field_validator("texts")
    @classmethod
    def _texts(cls, value: list[Any]) -> list[str]:
        return _strings_of(value)


def check_instruction(instruction: str | None, limits: RequestLimits, takes_instruction: bool) -> None:
    """An instruction only where the served model reads one (a decoder reranker), at most a query's length."""
    if instruction is None:
        return
    if not takes_instruction:
        raise RequestError(422, "instruction", "the served model is not a decoder reranker and reads no instruction; "
                           "omit the field", kind="unsupported")
    if len(instruction) > limits.max_query_chars:
        raise RequestError(422, "instruction", f"{len(instruction)} characters; at most {limits.max_query_chars}",
                           kind="query_too_long")


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


def _text(max_chars: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_chars, "pattern": NON_BLANK_PATTERN}


def constrain_openapi(schema: dict[str, Any], limits: RequestLimits, model_name: str, by_id: bool,
                      takes_instruction: bool = False) -> None:
    """Write what the validators and `check_limits` enforce into the generated request schemas (`instruction`
    only where the served model reads one)."""
    models = schema["components"]["schemas"]
    text = _text(limits.max_document_chars)
    item = {"anyOf": [text, {"type": "object", "properties": {"text": text}, "required": ["text"],
                             "additionalProperties": False}]}
    if by_id:
        item["anyOf"].append({"type": "object", "properties": {"id": {"type": "string", "minLength": 1}},
                              "required": ["id"], "additionalProperties": False})
    shapes = {"CohereRerankRequest": ("documents", item), "CohereV2RerankRequest": ("documents", text),
              "TeiRerankRequest": ("texts", text)}
    for name, (field, items) in shapes.items():
        properties = models[name]["properties"]
        properties["query"].update(_text(limits.max_query_chars))
        properties[field].update(items=items, maxItems=limits.max_documents)
        if takes_instruction:
            properties["instruction"] = {"anyOf": [_text(limits.max_query_chars), {"type": "null"}],
                                         "description": properties["instruction"]["description"]}
        else:
            del properties["instruction"]
        if "model" in properties:
            properties["model"] = {"anyOf": [{"type": "string", "enum": [model_name]}, {"type": "null"}],
                                   "description": "the served model (GET /v1/models); omit it or send this name"}
    models["TeiRerankRequest"]["properties"]["truncate"].update(const=True)
    models["CohereV2RerankRequest"]["properties"]["documents"]["items"] = text


class CohereResult(BaseModel):
    index: int
    relevance_score: float = Field(ge=0, le=1)
    document: dict[str, str] | None = None  # {"text": ...}, or {"id": ...} for a document given by id


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereResult]
    meta: dict[str, Any]


class CohereV2Result(BaseModel):
    index: int
    relevance_score: float = Field(ge=0, le=1)


class CohereV2RerankResponse(BaseModel):
    id: str
    results: list[CohereV2Result]
    meta: dict[str, Any]


class TeiResult(BaseModel):
    index: int
    score: float
    text: str | None = None


class Health(BaseModel):
    status: Literal["ready", "warming_up"]
    replica: str


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    owned_by: str = "rayrank"
    scorer: str
    source: str


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]
