"""The Serve application's arguments (`args:` in a Serve config file), validated by pydantic."""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, PositiveInt, model_validator

from rayrank.config import EngineConfig, StrictModel, _late_interaction_engine


class RequestLimits(StrictModel):
    """What one HTTP request may carry; anything beyond gets a 4xx naming the field."""

    max_documents: PositiveInt = 1000
    max_document_chars: PositiveInt = 20_000
    max_query_chars: PositiveInt = 4_000
    max_body_bytes: PositiveInt = 16 * 1024 * 1024


class BatchingConfig(StrictModel):
    """Dynamic batching across requests: up to `max_batch_size` requests per engine call (1 = off)."""

    max_batch_size: PositiveInt = 16
    batch_wait_timeout_s: float = Field(0.005, ge=0)


class AdmissionConfig(StrictModel):
    """The replica's own queue bound: the wait a request would have, and the pairs (documents) queued.

    A request is refused at once with 429 and `Retry-After` (the measured time to drain the queue)
    when the pairs ahead of it and its own, at the replica's measured pairs/s (capped by the running
    engine call's pace when that call is slower), would take longer than `max_queue_wait_s`, or when
    it would push the pairs waiting or being scored past `max_pending_pairs`; so under overload the
    accepted requests wait about `max_queue_wait_s` at most and the excess is refused fast instead of
    queueing for a minute. Until its warm-up has
    measured a rate, a replica (one added under load, say) admits a request only into an empty queue.
    """

    max_queue_wait_s: float = Field(3.0, gt=0)
    max_pending_pairs: PositiveInt = 4096
    # A 429 is sent after this long (an asyncio sleep: no CPU). A client that ignores Retry-After and
    # retries at once (a load generator, a naive loop) then sends at most clients / hold refusals a
    # second; answered at once, 64 such clients took the CPU from the engine; 2 s kept the accepted
    # p99 within 15% of a 3 s bound on a 2-core CPU where 1 s did not (docs/benchmarks/serving.md).
    refusal_hold_s: float = Field(2.0, ge=0)


class WarmupConfig(StrictModel):
    """The batch a replica scores before it reports ready (`GET /health`); it also seeds the
    measured pairs/s that admission divides by."""

    pairs: PositiveInt = 32
    document_words: PositiveInt = 100


class CacheConfig(StrictModel):
    """Opt-in semantic query cache. `model`: the bi-encoder for query similarity (default: the
    serving model when it is a late-interaction encoder, else all-MiniLM-L6-v2)."""

    enabled: bool = False
    threshold: float = Field(0.97, gt=0, le=1)
    max_entries: PositiveInt = 4096
    model: str | None = None


class AuthConfig(StrictModel):
    """`auth.api_keys_env`: the environment variable holding the accepted API keys, comma-separated
    (several let a key be rotated without downtime); unset or empty leaves the API open."""

    api_keys_env: str = "RAYRANK_API_KEY"

    def keys(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in os.environ.get(self.api_keys_env, "").split(",") if k.strip())


class ServeArgs(StrictModel):
    """Arguments of `rayrank.ray_app.app:build_app`. The engine's scorer defaults to late interaction (the
    bundled all-MiniLM-L6-v2); `engine: {scorer: cross-encoder, model: ...}` serves a cross-encoder."""

    engine: EngineConfig = EngineConfig(scorer="late-interaction")
    served_model_name: str | None = None
    limits: RequestLimits = RequestLimits()
    batching: BatchingConfig = BatchingConfig()
    admission: AdmissionConfig = AdmissionConfig()
    cache: CacheConfig = CacheConfig()
    auth: AuthConfig = AuthConfig()
    warmup: WarmupConfig = WarmupConfig()
    index: str | None = Field(None, description="INDEX_DIR written by `rayrank index` (local or s3://): "
                              "documents may then be given by id")
    storage: dict[str, Any] = Field({}, description="s3fs options for an s3:// index (default: AWS_* variables)")

    _engine = model_validator(mode="before")(_late_interaction_engine)

    @model_validator(mode="after")
    def _index_needs_late_interaction(self) -> ServeArgs:
        if self.index and self.engine.scorer != "late-interaction":
            raise ValueError("index: documents by id are token embeddings scored by MaxSim; serve the "
                             "late-interaction model the index was built with (engine.scorer: late-interaction)")
        return self

    @property
    def model_name(self) -> str:
        """The name clients see in `/v1/models` and may pass as `model`."""
        return self.served_model_name or self.engine.model_name
