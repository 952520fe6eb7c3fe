"""The HTTP API of a `Reranker` replica: Cohere `/v1/rerank`, TEI `/rerank`, `/v1/models`, `/healthz`.

Built per replica (Serve's late-bound ingress) so the configured limits shape the app. Every
refusal is JSON `{"error": {"type", "message", "field"}}` with a 4xx (or 503 when overloaded),
never a 500.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

import rayrank
from rayrank.ray_app.auth import protect
from rayrank.ray_app.metrics import ServeMetrics
from rayrank.ray_app.schemas import (CohereRerankRequest, CohereRerankResponse, CohereResult, ModelCard, ModelList,
                                     RequestError, TeiRerankRequest, TeiResult, check_limits)
from rayrank.ray_app.service import RerankService


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


def ranking(scores: np.ndarray, top_n: int | None) -> np.ndarray:
    """Indices best first; ties keep input order (as `rayrank.Reranker.rank`)."""
    return np.argsort(-scores, kind="stable")[:top_n]


def build_http_app(service: RerankService) -> FastAPI:
    args, metrics = service.args, service.metrics
    cross_encoder = service.engine.config.scorer == "cross-encoder"
    app = FastAPI(title="rayrank", version=rayrank.__version__,
                  description=f"Reranking with {args.model_name} ({service.engine.config.scorer}).")
    app.add_middleware(BodyLimit, max_bytes=args.limits.max_body_bytes, metrics=metrics)

    def refuse(error: RequestError) -> JSONResponse:
        metrics.rejected(error.kind)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
        return refuse(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return refuse(_validation_error(exc))

    @app.post("/v1/rerank", response_model=CohereRerankResponse, response_model_exclude_none=True)
    async def cohere_rerank(request: CohereRerankRequest) -> CohereRerankResponse:
        """Cohere-compatible rerank; `relevance_score` is a probability for cross-encoders, MaxSim otherwise."""
        if request.model is not None and request.model != args.model_name:
            raise RequestError(422, "model", f"{request.model!r} is not served here; this service runs "
                               f"{args.model_name!r} (GET /v1/models)", kind="unknown_model")
        if request.max_tokens_per_doc is not None:
            raise RequestError(422, "max_tokens_per_doc", "per-request truncation is not supported; documents "
                               "are truncated to the model's maximum length", kind="unsupported")
        check_limits(request.query, request.documents, args.limits, "documents")
        ids = service.document_ids(request.documents, "documents")
        texts = [d if isinstance(d, str) else "" for d in request.documents]
        scored = await service.score(request.query, texts, ids)
        scores = rayrank.sigmoid(scored.scores) if cross_encoder else scored.scores

        def document(i: int) -> dict[str, str] | None:
            if not request.return_documents:
                return None
            return {"text": texts[i]} if ids is None or ids[i] is None else {"id": ids[i]}

        results = [CohereResult(index=int(i), relevance_score=float(scores[i]), document=document(i))
                   for i in ranking(scores, request.top_n)]
        meta = {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}, "model": args.model_name,
                "cached": scored.cached}
        return CohereRerankResponse(id=str(uuid.uuid4()), results=results, meta=meta)

    @app.post("/rerank", response_model=list[TeiResult], response_model_exclude_none=True)
    async def tei_rerank(request: TeiRerankRequest) -> list[TeiResult]:
        """TEI-compatible rerank; `raw_scores: true` returns cross-encoder logits instead of probabilities."""
        if not request.truncate:
            raise RequestError(422, "truncate", "false is not supported; texts longer than the model's limit "
                               "are truncated (send truncate: true)", kind="unsupported")
        check_limits(request.query, request.texts, args.limits, "texts")
        scored = await service.score(request.query, request.texts)
        scores = rayrank.sigmoid(scored.scores) if cross_encoder and not request.raw_scores else scored.scores
        return [TeiResult(index=int(i), score=float(scores[i]),
                          text=request.texts[i] if request.return_text else None)
                for i in ranking(scores, None)]

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        engine = service.engine
        return ModelList(data=[ModelCard(id=args.model_name, scorer=engine.config.scorer,
                                         source=engine.resolved.source)])

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness plus this replica's counters (requests, batches, pairs, cache, rejections)."""
        index = service.index
        return {"status": "ok", "model": args.model_name, "stats": service.stats(),
                "index": None if index is None else {"url": index.url, "documents": len(index)}}

    protect(app, args.auth, metrics.rejected)
    return app

