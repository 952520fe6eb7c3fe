"""The HTTP API of a `Reranker` replica: Cohere `/v1/rerank` and `/v2/rerank`, TEI `/rerank`,
`/v1/models`, readiness `/health` and liveness `/healthz`.

Built per replica (Serve's late-bound ingress) so the configured limits shape the app and its
OpenAPI document. Every refusal is JSON `{"error": {"type", "message", "field"}}` with a 4xx (429
when overloaded), never a 500; every response names the replica in `X-Rayrank-Replica`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

import rayrank
from rayrank.ranking import Ranking
from rayrank.ray_app.auth import protect
from rayrank.ray_app.metrics import ServeMetrics
from rayrank.ray_app.schemas import (CohereRerankRequest, CohereRerankResponse, CohereResult, CohereV2RerankRequest,
                                     CohereV2RerankResponse, CohereV2Result, ErrorResponse, Health, ModelCard,
                                     ModelList, RequestError, TeiRerankRequest, TeiResult, check_instruction,
                                     check_limits, constrain_openapi)
from rayrank.ray_app.service import RerankService


RERANK_PATHS = frozenset({"/v1/rerank", "/v2/rerank", "/rerank"})


class BodyLimit:
    """ASGI middleware refusing bodies over `max_bytes` with 413 before anything parses them.

    Checks `Content-Length` first, then counts streamed (chunked) bytes, and replays the body.
    """

    def __init__(self, app, max_bytes: int, metrics: ServeMetrics) -> None:
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(int(declared), send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(size, send)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, size: int, send) -> None:
        error = RequestError(413, "body", f"request body of {size}+ bytes; at most {self.max_bytes}",
                             kind="body_too_large")
        self.metrics.rejected(error.kind)
        await JSONResponse(error.body(), status_code=413)({"type": "http"}, None, send)


class Admission:
    """ASGI middleware refusing rerank requests with 429 before their body is read or parsed while
    the replica is overloaded (`RerankService.overload`): under a flood the refusals then cost the
    engine little CPU. What depends on the request's own pairs is checked again at scoring."""

    def __init__(self, app, service: RerankService, refuse: Callable[[RequestError], Awaitable[JSONResponse]]) -> None:
        self.app, self.service, self.refuse = app, service, refuse

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in RERANK_PATHS or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if (refusal := self.service.overload(0)) is None:
            return await self.app(scope, receive, send)
        await (await self.refuse(refusal))(scope, receive, send)


class ReplicaHeader:
    """ASGI middleware naming the replica that answered in every response (`X-Rayrank-Replica`)."""

    def __init__(self, app, replica_id: str) -> None:
        self.app, self.header = app, (b"x-rayrank-replica", replica_id.encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, named)


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# What a rerank route can answer besides 200 (401 is added by `auth.protect` when keys are set).
RERANK_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("The body is not valid JSON"),
    413: _error("The body is over limits.max_body_bytes"),
    422: _error("A field is missing, of the wrong type, or over a limit; `error.field` names it"),
    429: {**_error("Overloaded: the replica's expected wait is over admission.max_queue_wait_s (JSON), or "
                   "Serve's queue (max_queued_requests) is full (plain text); retry after `Retry-After` seconds"),
          "headers": {"Retry-After": {"schema": {"type": "integer"}}},
          "content": {"text/plain": {"schema": {"type": "string"}}}},
}

def _validation_error(exc: RequestValidationError) -> RequestError:
    """FastAPI's first validation error as a RequestError naming the field (`documents`, `top_n`)."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if p != "body"]
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "json_invalid":
        return RequestError(400, "body", f"invalid JSON: {err.get('ctx', {}).get('error', message)}",
                            kind="invalid_json")
    if not loc:
        return RequestError(422, "body", f"{message}; expected a JSON object", kind="invalid_request")
    field = loc[0] + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc[1:])
    return RequestError(422, field, message, kind="missing_field" if err["type"] == "missing" else "invalid_request")


def build_http_app(service: RerankService) -> FastAPI:
    args, metrics = service.args, service.metrics
    app = FastAPI(title="rayrank", version=rayrank.__version__,
                  description=f"Reranking with {args.model_name} ({service.engine.config.scorer}).")

    async def refuse(error: RequestError) -> JSONResponse:
        """Every refusal's answer; an overloaded one is sent after `admission.refusal_hold_s` (an
        asyncio sleep): clients that ignore Retry-After and retry at once cannot flood the CPU."""
        metrics.rejected(error.kind)
        if error.kind == "overloaded":
            await asyncio.sleep(args.admission.refusal_hold_s)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    app.add_middleware(BodyLimit, max_bytes=args.limits.max_body_bytes, metrics=metrics)
    app.add_middleware(Admission, service=service, refuse=refuse)
    app.add_middleware(ReplicaHeader, replica_id=service.replica_id)

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
        return await refuse(exc)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        """FastAPI's own refusals (a body that is not UTF-8, an unknown route, a wrong method), in our format."""
        kind = "invalid_json" if exc.status_code == 400 else "invalid_request"
        return await refuse(RequestError(exc.status_code, "body" if exc.status_code == 400 else None,
                                         str(exc.detail), kind=kind, headers=exc.headers))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return await refuse(_validation_error(exc))

    def check_model(model: str | None) -> None:
        if model is not None and model != args.model_name:
            raise RequestError(422, "model", f"{model!r} is not served here; this service runs "
                               f"{args.model_name!r} (GET /v1/models)", kind="unknown_model")

    takes_instruction = getattr(service.engine.scorer, "takes_instruction", False)

    async def relevance(query: str, documents: list[str], ids, max_tokens: int | None,
                        instruction: str | None, top_n: int | None) -> tuple[Ranking, bool]:
        """The request's documents ranked by scores in [0, 1] (cut to `max_tokens` tokens first, if given)."""
        check_instruction(instruction, args.limits, takes_instruction)
        if max_tokens is not None:
            documents = service.engine.cut_documents(documents, max_tokens)
        scored = await service.score(query, documents, ids, instruction)
        scores = service.engine.relevance([query] * len(documents), scored.scores)
        return Ranking.of_list(scores, top_n), scored.cached

    def meta(cached: bool) -> dict[str, Any]:
        return {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}, "model": args.model_name,
                "cached": cached}

    @app.post("/v1/rerank", response_model=CohereRerankResponse, response_model_exclude_none=True,
              responses=RERANK_ERRORS)
    async def cohere_rerank(request: CohereRerankRequest) -> CohereRerankResponse:
        """Cohere-compatible rerank (`cohere.Client.rerank`); `relevance_score` in [0, 1] for every scorer."""
        check_model(request.model)
        check_limits(request.query, request.documents, args.limits, "documents")
        ids = service.document_ids(request.documents, "documents")
        texts = [d if isinstance(d, str) else "" for d in request.documents]
        ranked, cached = await relevance(request.query, texts, ids, request.max_tokens_per_doc, request.instruction,
                                         request.top_n)

        def document(i: int) -> dict[str, str] | None:
            if not request.return_documents:
                return None
            return {"text": texts[i]} if ids is None or ids[i] is None else {"id": ids[i]}

        results = [CohereResult(index=int(i), relevance_score=float(score), document=document(i))
                   for i, score in zip(ranked.positions, ranked.scores)]
        return CohereRerankResponse(id=str(uuid.uuid4()), results=results, meta=meta(cached))

    @app.post("/v2/rerank", response_model=CohereV2RerankResponse, responses=RERANK_ERRORS)
    async def cohere_v2_rerank(request: CohereV2RerankRequest) -> CohereV2RerankResponse:
        """Cohere v2 rerank (`cohere.ClientV2.rerank`, LangChain's `CohereRerank`): documents as strings."""
        check_model(request.model)
        check_limits(request.query, request.documents, args.limits, "documents")
        ranked, cached = await relevance(request.query, request.documents, None, request.max_tokens_per_doc,
                                         request.instruction, request.top_n)
        results = [CohereV2Result(index=int(i), relevance_score=float(score))
                   for i, score in zip(ranked.positions, ranked.scores)]
        return CohereV2RerankResponse(id=str(uuid.uuid4()), results=results, meta=meta(cached))

    @app.post("/rerank", response_model=list[TeiResult], response_model_exclude_none=True, responses=RERANK_ERRORS)
    async def tei_rerank(request: TeiRerankRequest) -> list[TeiResult]:
        """TEI-compatible rerank; scores in [0, 1], or with `raw_scores: true` logits / raw MaxSim."""
        if not request.truncate:
            raise RequestError(422, "truncate", "false is not supported; texts longer than the model's limit "
                               "are truncated (send truncate: true)", kind="unsupported")
        check_limits(request.query, request.texts, args.limits, "texts")
        check_instruction(request.instruction, args.limits, takes_instruction)
        scored = await service.score(request.query, request.texts, instruction=request.instruction)
        ranked = Ranking.of_list(scored.scores if request.raw_scores else service.engine.relevance(
            [request.query] * len(request.texts), scored.scores))
        return [TeiResult(index=int(i), score=float(score), text=request.texts[i] if request.return_text else None)
                for i, score in zip(ranked.positions, ranked.scores)]

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        engine = service.engine
        return ModelList(data=[ModelCard(id=args.model_name, scorer=engine.config.scorer,
                                         source=engine.resolved.source)])

    @app.get("/health", response_model=Health, responses={503: {"model": Health, "description": "Warming up"}})
    async def health() -> JSONResponse:
        """Readiness: 200 once this replica has scored its warm-up batch, 503 before."""
        if service.ready:
            return JSONResponse(Health(status="ready", replica=service.replica_id).model_dump())
        return JSONResponse(Health(status="warming_up", replica=service.replica_id).model_dump(), status_code=503,
                            headers={"Retry-After": "1"})

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness plus this replica's id, measured pairs/s and counters (requests, pairs, cache, rejections)."""
        index = service.index
        return {"status": "ok", "model": args.model_name, "replica": service.replica_id, "ready": service.ready,
                "pairs_per_s": service.pairs_per_s, "stats": service.stats(),
                "index": None if index is None else {"url": index.url, "documents": len(index)}}

    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build_openapi()
            constrain_openapi(schema, args.limits, args.model_name, by_id=service.index is not None,
                              takes_instruction=takes_instruction)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    protect(app, args.auth, metrics.rejected)
    return app

