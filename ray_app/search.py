"""The online funnel: `POST /v1/search`, each stage its own Serve deployment, composed with handles.

`build_search_app(SearchArgs)` binds one `FunnelStage` deployment per stage of the funnel config (named
`stage-NAME`, replicas and resources from `args.deployments.NAME`) and the `Search` ingress, which holds
their handles: the retrieval stages of a query run at once, fusion and rerankers when their inputs
are in. A stage replica batches the queries waiting for it into one engine call (`stage.run(queries,
previous)`, in a worker thread); an `llm` stage instead sends each query's calls at once (its
server batches them).

Deadline-aware fallback: with `latency_budget_ms`, before a reranking stage (`rerank`, `llm`) the
ingress asks that stage's `StageClock` whether its queue (the documents this ingress has sent it
and not had back) drains, at its measured seconds per document, within the time left; if not, the
stage is skipped and its input's best `k` stand for its answer (`meta.fallback`, reason `queue`). A
stage that was sent the request but has not answered when the budget runs out is given up on the
same way (reason `deadline`), as is one whose Serve queue is full (reason `overloaded`).

Run it with `serve run configs/search.scifact.yaml` (from the repository root).
"""

# No `from __future__ import annotations`: Serve reads build_search_app's annotation as a class.
import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from rayrank.funnel.config import FunnelConfig
from rayrank.funnel.corpus import load_corpus
from rayrank.funnel.deadline import StageClock
from rayrank.funnel.stages import build_stage, check_stages
from rayrank.ranking import Ranking
from rayrank.ray_app.search_config import RERANKERS, SearchArgs, StageDeployment
from rayrank.ray_app.search_http import build_search_http
from rayrank.ray_app.search_metrics import SearchMetrics, StageEvents


@dataclass(frozen=True)
class StageAnswer:
    """A stage's ranking for one query, and the engine call that made it: seconds and documents scored."""

    ranking: Ranking
    seconds: float
    documents: int


@serve.deployment(name="FunnelStage")
class FunnelStage:
    """One stage of the funnel; the queries waiting for it are ranked together."""

    def __init__(self, funnel: FunnelConfig, name: str, deployment: StageDeployment) -> None:
        self.kind = next(s.kind for s in funnel.stages if s.name == name)
        self.stage = build_stage(funnel, name, load_corpus(funnel.corpus, funnel.storage))
        self.events = StageEvents(name)
        self.run_batch.set_max_batch_size(deployment.max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(deployment.batch_wait_timeout_s)

    async def run(self, query: str, previous: dict[str, Ranking]) -> StageAnswer:
        """This stage's ranking of `query`, given its input stages' rankings of it (by name)."""
        if self.kind == "llm":  # waits on a remote model that batches itself: each query in its own thread
            return (await self._run([(query, previous)]))[0]
        return await self.run_batch((query, previous))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def run_batch(self, requests: list[tuple[str, dict[str, Ranking]]]) -> list[StageAnswer]:
        return await self._run(requests)

    async def _run(self, requests: list[tuple[str, dict[str, Ranking]]]) -> list[StageAnswer]:
        queries = [query for query, _ in requests]
        previous = self.stage.previous({name: [p[name] for _, p in requests] for name in self.stage.inputs})
        started = time.perf_counter()
        rankings = await asyncio.to_thread(self.stage.run, queries, previous)
        seconds = time.perf_counter() - started
        self.events.export(self.stage.counts)
        documents = sum(len(r.doc_ids) for _, p in requests for r in p.values()) or len(requests)
        return [StageAnswer(ranking, seconds, documents) for ranking in rankings]


@dataclass
class StageReport:
    """What `meta.stages` says of one stage of one request."""

    name: str
    kind: str
    documents_in: int
    documents_out: int = 0
    ms: float = 0.0
    skipped: str | None = None  # the fallback reason when the stage was skipped
    answered_from: str | None = None  # then: the stage whose ranking stood in

    def meta(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "documents_in": self.documents_in,
                "documents_out": self.documents_out, "ms": round(self.ms, 2), "skipped": self.skipped}


@serve.deployment(name="Search")
@serve.ingress()
class Search:
    """The ingress: walks the funnel for each request over the stage deployments' handles."""

    def __init__(self, args: SearchArgs, stages: dict[str, DeploymentHandle]) -> None:
        self.args, self.handles = args, stages
        self.metrics = SearchMetrics()
        deadline = args.deadline
        self.clocks = {s.name: StageClock(deadline.window, deadline.quantile, args.deployment(s.name).num_replicas)
                       for s in args.funnel.stages if s.kind in RERANKERS}

    def __serve_build_asgi_app__(self):
        return build_search_http(self)

    def stats(self) -> dict[str, Any]:
        return {**self.metrics.counts,
                "stages": {name: {"pending_documents": clock.pending,
                                  "ms_per_document": round(clock.seconds_per_document * 1000, 3)}
                           for name, clock in self.clocks.items()}}

    async def search(self, query: str, top_n: int, budget_ms: float | None) -> dict[str, Any]:
        """The best `top_n` documents of the last stage, and `meta`: each stage's ms, and any fallback."""
        started = time.perf_counter()
        deadline = None if budget_ms is None else started + (budget_ms - self.args.deadline.margin_ms) / 1000
        funnel = self.args.funnel
        reports: dict[str, StageReport] = {}
        tasks: dict[str, asyncio.Task] = {}
        for stage in funnel.stages:
            tasks[stage.name] = asyncio.create_task(self._stage(stage, query, tasks, reports, deadline))
        results = await asyncio.gather(*tasks.values())
        final: Ranking = results[-1]
        self.metrics.answered({name: r.ms for name, r in reports.items()})
        fallback = [{"stage": r.name, "reason": r.skipped, "answered_from": r.answered_from}
                    for r in reports.values() if r.skipped]
        meta = {"stages": [reports[s.name].meta() for s in funnel.stages], "fallback": fallback or None,
                "total_ms": round((time.perf_counter() - started) * 1000, 2)}
        results = [{"id": doc_id, "score": float(score)} for doc_id, score in zip(final.doc_ids[:top_n], final.scores)]
        return {"id": str(uuid.uuid4()), "results": results, "meta": meta}

    async def _stage(self, stage, query: str, tasks: dict[str, asyncio.Task], reports: dict[str, StageReport],
                     deadline: float | None) -> Ranking:
        previous = {name: await tasks[name] for name in self.args.funnel.inputs_of(stage)}
        report = reports[stage.name] = StageReport(stage.name, stage.kind,
                                                   sum(len(r.doc_ids) for r in previous.values()))
        started = time.perf_counter()
        clock = self.clocks.get(stage.name)
        if clock is None:
            answer = await self.handles[stage.name].run.remote(query, previous)
            ranking = answer.ranking
        else:
            ranking = await self._rerank(stage, clock, query, previous, report, deadline)
        report.ms, report.documents_out = (time.perf_counter() - started) * 1000, len(ranking.doc_ids)
        return ranking

    async def _rerank(self, stage, clock: StageClock, query: str, previous: dict[str, Ranking],
                      report: StageReport, deadline: float | None) -> Ranking:
        """The stage's answer, or (`report.skipped` says why) its input's best `k` when it cannot be in time."""
        ((report.answered_from, source),) = previous.items()
        remaining = None if deadline is None else deadline - time.perf_counter()
        if remaining is not None and remaining <= 0:
            return self._fall_back(stage, source, report, "deadline")
        if remaining is not None and not clock.fits(report.documents_in, remaining):
            return self._fall_back(stage, source, report, "queue")
        clock.start(report.documents_in)
        response = self.handles[stage.name].run.remote(query, previous)
        try:
            answer = await (response if remaining is None else asyncio.wait_for(response, remaining))
        except asyncio.TimeoutError:
            response.cancel()  # awaiting stops at the timeout; this takes the request off the stage's queue
            return self._fall_back(stage, source, report, "deadline")
        except BackPressureError:
            return self._fall_back(stage, source, report, "overloaded")
        finally:
            clock.finish(report.documents_in)
        clock.observe(answer.seconds, answer.documents)
        return answer.ranking

    def _fall_back(self, stage, source: Ranking, report: StageReport, reason: str) -> Ranking:
        report.skipped = reason
        self.metrics.fallback(stage.name, reason)
        return Ranking(source.doc_ids[:stage.k], source.scores[:stage.k])


def build_search_app(args: SearchArgs) -> Application:
    """Serve's typed application builder (`import_path: rayrank.ray_app.search:build_search_app`)."""
    check_stages(args.funnel)  # before deploying, not in every stage replica
    stages = {}
    for stage in args.funnel.stages:
        deployment = args.deployment(stage.name)
        stages[stage.name] = FunnelStage.options(name=f"stage-{stage.name}", **deployment.serve_options()).bind(
            args.funnel, stage.name, deployment)
    return Search.options(**args.ingress.serve_options()).bind(args, stages)
