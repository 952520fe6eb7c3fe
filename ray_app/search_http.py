"""The HTTP API of the search ingress: `POST /v1/search`, `GET /healthz`.

With keys in `auth.api_keys_env` every route but `/healthz` needs `Authorization: Bearer KEY`, as on
the rerank API (`rayrank.ray_app.auth`).

Errors are the same JSON as the rerank API's, `{"error": {"type", "message", "field"}}` with a 4xx
naming the field (422 for an empty query, a `top_n` beyond the last stage's `k`).
"""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, PositiveFloat, PositiveInt

import rayrank
from rayrank.ray_app.auth import protect
from rayrank.ray_app.http import _validation_error
from rayrank.ray_app.schemas import RequestError, _Request
from rayrank.ray_app.search_config import SearchArgs
from rayrank.ray_app.search_metrics import SearchMetrics


class SearchService(Protocol):
    """The ingress as its routes see it (`rayrank.ray_app.search.Search` implements it)."""

    args: SearchArgs
    metrics: SearchMetrics

    def stats(self) -> dict[str, Any]: ...

    async def search(self, query: str, top_n: int, budget_ms: float | None) -> dict[str, Any]: ...


class SearchRequest(_Request):
    """`query` (non-empty), `top_n`, `latency_budget_ms`; unknown keys are refused."""

    top_n: PositiveInt | None = Field(None, description="results wanted (default: args.default_top_n, "
                                         "else the last stage's k)")
    latency_budget_ms: PositiveFloat | None = Field(None, description="answer within this many ms, skipping "
                                                    "reranking stages whose queue cannot be in time")


class SearchResult(BaseModel):
    id: str
    score: float


class SearchResponse(BaseModel):
    id: str
    results: list[SearchResult]
    meta: dict[str, Any] = Field(description="stages: [{name, kind, documents_in, documents_out, ms, skipped}], "
                                 "fallback: [{stage, reason, answered_from}] or null, total_ms")


def build_search_http(service: SearchService) -> FastAPI:
    args, metrics = service.args, service.metrics
    last = args.funnel.stages[-1]
    app = FastAPI(title="rayrank search", version=rayrank.__version__,
                  description=" -> ".join(f"{s.name} ({s.kind}, k={s.k})" for s in args.funnel.stages))

    def refuse(error: RequestError) -> JSONResponse:
        metrics.rejected(error.kind)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
        return refuse(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return refuse(_validation_error(exc))

    @app.post("/v1/search", response_model=SearchResponse)
    async def search(request: SearchRequest) -> dict[str, Any]:
        """The funnel's best documents for the query, best first; `meta` times each stage."""
        if len(request.query) > args.limits.max_query_chars:
            raise RequestError(422, "query", f"{len(request.query)} characters; at most "
                               f"{args.limits.max_query_chars}", kind="query_too_long")
        top_n = request.top_n or args.default_top_n or last.k
        if top_n > last.k:
            raise RequestError(422, "top_n", f"at most {last.k} (k of the last stage, {last.name!r}), got {top_n}",
                               kind="invalid_request")
        return await service.search(request.query, top_n, request.latency_budget_ms)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness, this ingress's counters and each reranking stage's queue and measured speed."""
        return {"status": "ok", "stages": [s.name for s in args.funnel.stages], "stats": service.stats()}

    protect(app, args.auth, metrics.rejected)
    return app
