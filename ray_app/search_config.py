"""The search application's arguments (`args:` of `rayrank.ray_app.search:build_search_app`), validated."""

from __future__ import annotations

from typing import Any

from pydantic import Field, NonNegativeFloat, PositiveInt, model_validator

from rayrank.config import StrictModel
from rayrank.funnel.config import FunnelConfig, load_funnel_config
from rayrank.ray_app.config import AuthConfig

# Stages whose queue the deadline estimator watches: skipping them still leaves a ranking to answer from.
RERANKERS = ("rerank", "llm")


class StageDeployment(StrictModel):
    """How one stage runs: its replicas and their resources, and how its requests are batched.

    Each stage is its own Serve deployment, so the cross-encoder gets replicas (and GPUs) of its own.
    """

    num_replicas: PositiveInt = 1
    num_cpus: NonNegativeFloat = 1.0
    num_gpus: NonNegativeFloat = 0.0
    max_ongoing_requests: PositiveInt = 64
    max_queued_requests: int = Field(-1, ge=-1, description="Serve's queue bound in front of the replicas; -1: none")
    max_batch_size: PositiveInt = 16
    batch_wait_timeout_s: NonNegativeFloat = 0.002

    def serve_options(self) -> dict[str, Any]:
        return {"num_replicas": self.num_replicas, "max_ongoing_requests": self.max_ongoing_requests,
                "max_queued_requests": self.max_queued_requests,
                "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}}


class IngressDeployment(StrictModel):
    """The `Search` ingress: it waits on the stages more than it computes.

    Each replica keeps its own clocks of the stages' queues (the documents it has sent them), so with
    several ingress replicas each sees its share of the queue: one replica is the exact case.
    """

    num_replicas: PositiveInt = 1
    num_cpus: NonNegativeFloat = 0.25
    max_ongoing_requests: PositiveInt = 256

    def serve_options(self) -> dict[str, Any]:
        return {"num_replicas": self.num_replicas, "max_ongoing_requests": self.max_ongoing_requests,
                "ray_actor_options": {"num_cpus": self.num_cpus}}


class DeadlineConfig(StrictModel):
    """The deadline estimator (`rayrank.funnel.deadline.StageClock`) of each reranking stage.

    `quantile` of the last `window` engine calls' seconds per document; `margin_ms` of a request's
    budget is kept for what follows the stages (the HTTP answer, the proxy).
    """

    quantile: float = Field(0.5, ge=0, le=1)
    window: PositiveInt = 64
    margin_ms: NonNegativeFloat = 10.0


class SearchLimits(StrictModel):
    max_query_chars: PositiveInt = 4_000


class SearchArgs(StrictModel):
    """`funnel`: a funnel config (the mapping, or the path of its YAML file); `deployments`: per stage name."""

    funnel: FunnelConfig
    deployments: dict[str, StageDeployment] = {}
    ingress: IngressDeployment = IngressDeployment()
    deadline: DeadlineConfig = DeadlineConfig()
    limits: SearchLimits = SearchLimits()
    auth: AuthConfig = AuthConfig()  # the rerank API's keys: `Authorization: Bearer KEY` on /v1/search
    default_top_n: PositiveInt | None = Field(None, description="results of a request without top_n "
                                              "(default: the last stage's k)")

    @model_validator(mode="before")
    @classmethod
    def _funnel_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("funnel"), str):
            data = {**data, "funnel": load_funnel_config(data["funnel"])}
        return data

    @model_validator(mode="after")
    def _known_stages(self) -> SearchArgs:
        names = [stage.name for stage in self.funnel.stages]
        unknown = sorted(set(self.deployments) - set(names))
        if unknown:
            raise ValueError(f"deployments: {', '.join(map(repr, unknown))} not a stage of the funnel "
                             f"(stages: {', '.join(names)})")
        if self.default_top_n and self.default_top_n > self.funnel.stages[-1].k:
            raise ValueError(f"default_top_n: at most the last stage's k ({self.funnel.stages[-1].k}), "
                             f"got {self.default_top_n}")
        return self

    def deployment(self, name: str) -> StageDeployment:
        return self.deployments.get(name, StageDeployment())
