"""`RerankDeployment` (the Serve deployment named "Reranker") and the typed application builder `build_app`.

Requests wait in `@serve.batch`; the batches waiting for the engine (`rayrank.ray_app.coalesce`) have
their pairs flattened into one token-budgeted engine call (`rayrank.Reranker.score_pairs`, in a
worker thread so the replica keeps admitting and refusing requests meanwhile) and split back per
request. With an index (`args.index`) documents may be given by id: their token embeddings are
read from it and only queries (and documents sent as text) are encoded.

A replica scores one warm-up batch (in a thread, so `/healthz` answers meanwhile) before `/health`
reports it ready; requests that arrive earlier wait for it. Admission divides the pairs queued by
the pairs/s the replica measures on its own engine calls (warm-up first).

Run it with `rayrank serve` (the packaged `serve.default.yaml`).
"""

# No `from __future__ import annotations`: Serve reads build_app's annotation as a class to
# validate `args` with it.
import gc
import logging
import math
import threading
import time

import numpy as np
from ray import serve
from ray.serve import Application

import rayrank
from rayrank.cache import QueryCache, documents_key, mean_pooled
from rayrank.index import IndexReader, score_from_index
from rayrank.io.storage import storage_options
from rayrank.models import DEFAULT_LATE_INTERACTION
from rayrank.ray_app.coalesce import BatchCoalescer
from rayrank.ray_app.config import ServeArgs
from rayrank.ray_app.http import build_http_app
from rayrank.ray_app.metrics import ServeMetrics
from rayrank.ray_app.schemas import DocumentId, RequestError
from rayrank.ray_app.service import RequestScores, ScoreRequest

logger = logging.getLogger(__name__)
WARMUP_WORDS = "ray cluster python data model query document search rank score".split()


# Serve's own queue bound answers like the replica's: 429 (docs/guides/serving.md).
@serve.deployment(name="Reranker", max_ongoing_requests=64, max_queued_requests=64,
                  backpressure_config={"status_code": 429, "retry_after_s": 1})
@serve.ingress()
class RerankDeployment:
    """One engine per replica, its batch queue bounded by `admission.max_pending_pairs`."""

    def __init__(self, args: ServeArgs) -> None:
        self.args = args
        self.engine = rayrank.Reranker.from_config(args.engine)
        self.metrics = ServeMetrics(args.model_name)
        self.cache = (QueryCache(args.cache.threshold, args.cache.max_entries) if args.cache.enabled else None)
        self._query_encoder = self._cache_encoder() if args.cache.enabled else None
        self.index = IndexReader(args.index, storage_options(args.storage, args.index)) if args.index else None
        if self.index is not None:
            self.index.check_model(self.engine.resolved.name)
        self.pending_pairs = 0
        self.pairs_per_s: float | None = None  # measured on the engine calls, warm-up first
        gc.freeze()  # the loaded model and libraries live as long as the replica: no need to walk them per collection
        self._call: tuple[int, float] | None = None  # the running engine call: pairs, start
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.coalescer = BatchCoalescer(self._score_requests, args.batching.max_batch_size)
        self.score_batch.set_max_batch_size(args.batching.max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(args.batching.batch_wait_timeout_s)
        self._ready = threading.Event()
        self._warmup_error: BaseException | None = None
        self._warmup = threading.Thread(target=self._warm_up, name="rayrank-warm-up", daemon=True)
        self._warmup.start()

    def __serve_build_asgi_app__(self):
        return build_http_app(self)

    def _cache_encoder(self):
        """The bi-encoder for query similarity: the serving model when it is late interaction."""
        model = self.args.cache.model
        if self.engine.config.scorer == "late-interaction" and model in (None, self.engine.config.model_name):
            return self.engine.scorer
        settings = self.engine.config.model_dump(exclude={"model", "scorer", "max_length", "query_max_length"})
        return rayrank.Reranker(model or DEFAULT_LATE_INTERACTION, scorer="late-interaction", **settings).scorer

    def _warm_up(self) -> None:
        """Score one batch of `warmup.pairs` pairs (lazy kernels, allocator, thread pools), then be ready."""
        warmup = self.args.warmup
        words = (WARMUP_WORDS * (warmup.document_words // len(WARMUP_WORDS) + 1))[: warmup.document_words]
        try:
            start = time.perf_counter()
            self.engine.score_pairs(["warm-up query"] * warmup.pairs, [" ".join(words)] * warmup.pairs)
            self._measured(warmup.pairs, time.perf_counter() - start)
            logger.info("replica %s warm: %d pairs at %.0f pairs/s", self.replica_id, warmup.pairs, self.pairs_per_s)
        except BaseException as exc:  # Serve's health check restarts the replica
            self._warmup_error = exc
            logger.exception("warm-up failed")
        finally:
            self._ready.set()

    def _measured(self, pairs: int, seconds: float) -> None:
        """Fold one engine call into the replica's pairs/s (a moving average; the latest call weighs 30%)."""
        if pairs and seconds > 0:
            rate = pairs / seconds
            self.pairs_per_s = rate if self.pairs_per_s is None else 0.7 * self.pairs_per_s + 0.3 * rate

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._warmup_error is None

    def check_health(self) -> None:
        """Serve's replica health check: a replica whose warm-up failed is replaced."""
        if self._warmup_error is not None:
            raise RuntimeError(f"warm-up failed: {self._warmup_error!r}")

    def stats(self) -> dict[str, int]:
        return {"pending_pairs": self.pending_pairs, **self.metrics.counts}

    def document_ids(self, documents: list[str | DocumentId], field: str) -> tuple[str | None, ...] | None:
        """Ids of the documents given by id (None for texts), or None when all are texts.

        Raises a 422 naming the first document that cannot be read: no index loaded, or not in it.
        """
        ids = tuple(d.id if isinstance(d, DocumentId) else None for d in documents)
        if self.index is not None and any(doc_id is not None for doc_id in ids):
            self.index = self.index.current()  # an index update is seen from the next request on (one stat)
        for i, doc_id in enumerate(ids):
            if doc_id is None:
                continue
            if self.index is None:
                raise RequestError(422, f"{field}[{i}]", "documents given by id need an index, and this service "
                                   "loads none (set args.index to a `rayrank index` directory)", kind="no_index")
            if doc_id not in self.index:
                raise RequestError(422, f"{field}[{i}].id", f"{doc_id!r} is not in the index "
                                   f"({len(self.index):,} documents)", kind="unknown_document")
        return ids if any(doc_id is not None for doc_id in ids) else None

    async def score(self, query: str, documents: list[str], doc_ids: tuple[str | None, ...] | None = None,
                    instruction: str | None = None) -> RequestScores:
        """Admit the request's pairs or refuse at once with 429 + Retry-After; then wait for its batch."""
        if (refusal := self.overload(len(documents))) is not None:
            raise refusal
        self.pending_pairs += len(documents)
        try:
            return await self.score_batch(ScoreRequest(query, documents, doc_ids, instruction))
        finally:
            self.pending_pairs -= len(documents)

    def overload(self, pairs: int) -> RequestError | None:
        """The 429 for a request of `pairs` pairs, or None to admit it.

        Refused when the pairs ahead and its own would take over `max_queue_wait_s` at the replica's
        pairs/s, would pass `max_pending_pairs`, or wait for the warm-up (no rate measured yet: a
        replica added under load would otherwise queue a minute of work before it knows its speed).
        The pairs/s is the measured moving average, or less while the running engine call is already
        slower than that (another process took the CPU): work admitted at the old rate is what runs late.
        """
        admission, ahead, rate = self.args.admission, self.pending_pairs, self._rate()
        if not ahead:
            return None
        wait = (ahead + pairs) / rate if rate else None
        if wait is None:
            reason = f"{ahead} pairs queued for a replica still warming up"
        elif ahead + pairs > admission.max_pending_pairs:
            reason = f"{ahead} pairs queued (limit {admission.max_pending_pairs})"
        elif wait > admission.max_queue_wait_s:
            reason = (f"{ahead} pairs queued, {wait:.2f}s of work at {rate:.0f} pairs/s with this request's "
                      f"{pairs} (limit {admission.max_queue_wait_s:g}s)")
        else:
            return None
        retry = max(1, math.ceil(wait)) if wait is not None else 1
        return RequestError(429, None, f"the replica is overloaded: {reason}; retry after {retry}s",
                            kind="overloaded", headers={"Retry-After": str(retry)})

    def _rate(self) -> float | None:
        """Pairs/s for admission: the moving average, capped by what the running call shows so far."""
        rate, call = self.pairs_per_s, self._call
        if rate and call is not None:
            pairs, started = call
            elapsed = time.perf_counter() - started
            if elapsed * rate > pairs:  # the call has run longer than the average rate allows
                rate = pairs / elapsed
        return rate

    # Batches that form while the engine is busy wait in the coalescer and are scored together; four may
    # wait at once (4 x the default 16 requests = the default max_ongoing_requests).
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005, max_concurrent_batches=4)
    async def score_batch(self, requests: list[ScoreRequest]) -> list[RequestScores]:
        return await self.coalescer.submit(requests)

    def _score_requests(self, requests: list[ScoreRequest]) -> list[RequestScores]:
        """Cache lookups, then one engine call for every pair of every missed request, split back."""
        self._ready.wait()  # requests that arrive during warm-up wait for it
        found: list[dict[str, float] | None] = [None] * len(requests)
        if self.cache is not None:
            vectors = mean_pooled(self._query_encoder.encode_queries([request.query for request in requests]))
            # An instruction changes every score: it is part of what a cached answer was computed for.
            keys = [documents_key(r.keys() + ([f"\0instruction:{r.instruction}"] if r.instruction else []))
                    for r in requests]
            found = [self.cache.lookup(key, vector) for key, vector in zip(keys, vectors)]
            hits = sum(f is not None for f in found)
            self.metrics.cache(hits, len(requests) - hits)
        todo = [i for i, f in enumerate(found) if f is None]
        queries = [requests[i].query for i in todo for _ in requests[i].documents]
        documents = [doc for i in todo for doc in requests[i].documents]
        start = time.perf_counter()
        self._call = (len(documents), start)
        try:
            if self.index is not None:  # one rule for every request: documents encoded like the index's
                doc_ids = [d for i in todo for d in (requests[i].doc_ids or (None,) * len(requests[i].documents))]
                scores, _ = score_from_index(self.engine.scorer, self.index, queries, doc_ids, documents)
            else:  # one engine call per instruction in the batch (a decoder's prompt holds it)
                scores = np.empty(len(documents), dtype=np.float32)
                instructions = [requests[i].instruction for i in todo for _ in requests[i].documents]
                for instruction in dict.fromkeys(instructions):
                    rows = [k for k, given in enumerate(instructions) if given == instruction]
                    scores[rows] = self.engine.score_pairs([queries[k] for k in rows], [documents[k] for k in rows],
                                                           instruction).scores
        finally:
            self._call = None
        self._measured(len(documents), time.perf_counter() - start)
        self.metrics.batch(len(requests), len(documents))
        out: list[RequestScores] = [None] * len(requests)  # type: ignore[list-item]
        bounds = np.cumsum([0] + [len(requests[i].documents) for i in todo])
        for i, start, end in zip(todo, bounds[:-1], bounds[1:]):
            out[i] = RequestScores(scores[start:end], cached=False)
            if self.cache is not None:
                self.cache.store(keys[i], vectors[i], dict(zip(requests[i].keys(), scores[start:end].tolist())))
        for i, by_key in enumerate(found):
            if by_key is not None:
                out[i] = RequestScores(np.array([by_key[k] for k in requests[i].keys()], dtype=np.float32), cached=True)
        return out


def build_app(args: ServeArgs) -> Application:
    """Serve's typed application builder (`import_path: rayrank.ray_app.app:build_app`)."""
    return RerankDeployment.bind(args)
