"""Funnel stages: one object per stage config, and `Funnel`, which runs them in order.

The interface (the batch job and the Serve deployments both use it; nothing here imports Ray):

- `rayrank.ranking.Ranking`: one query's list, best first, `scores` float32 (the type index search,
  the Python API and the HTTP routes return too).
- A stage is built from its config and the corpus: `build_stage(config, name, corpus)` (or
  `Funnel(config)` builds them all). Every stage has `name`, `k`, `inputs` (names of the stages it
  reads, `FunnelConfig.inputs_of`) and `counts` (a Counter of events, e.g. the llm stage's failures by
  reason, cumulative).
- `stage.previous(rankings)` picks what `run` takes from the earlier stages' rankings (by name); the
  batch funnel and each Serve stage replica both plan a stage's input with it.
- `stage.run(queries, previous) -> list[Ranking]`, one ranking per query, at most `k` documents:
  - retrieval stages (`bm25`, `dense`, `late-interaction`) ignore `previous` (pass None);
  - `rerank` and `llm` take `previous`: the list[Ranking] of their one input stage (`inputs[0]`),
    and reorder each query's list, passing on its best `k`;
  - `fuse` takes `previous`: a dict of input stage name → list[Ranking] (every name in `inputs`).
- `Funnel(config, corpus=None).run(queries) -> FunnelRun`: every stage's rankings (dict by stage name,
  in config order; the last is the final ranking), its seconds and its count increments.
  `funnel.final` is the last stage's name.

Indexes must exist when a dense or late-interaction stage is built (IndexFormatError otherwise); the
batch job (`rayrank funnel`) builds missing ones first. `check_stages(config)` refuses, before any stage
loads, what every worker building the stages would fail on: a missing optional package, or an existing
index of the other kind or built by another model.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rayrank.funnel.config import (Bm25Stage, DenseStage, FunnelConfig, FuseStage, LateInteractionStage, LlmStage,
                                   RerankStage, StageBase)
from rayrank.funnel.corpus import Corpus, load_corpus
from rayrank.ranking import Ranking


class _Stage:
    inputs: tuple[str, ...] = ()  # set by build_stage

    def __init__(self, config: StageBase) -> None:
        self.config, self.name, self.k = config, config.name, config.k
        self.counts: Counter[str] = Counter()

    def previous(self, rankings: Mapping[str, list[Ranking]]) -> Any:
        """What `run` takes, from the rankings of (at least) this stage's inputs: none, or its one input's."""
        return rankings[self.inputs[0]] if self.inputs else None


class Bm25Retriever(_Stage):
    def __init__(self, config: Bm25Stage, corpus: Corpus) -> None:
        from rayrank.funnel.bm25 import BM25

        super().__init__(config)
        self.doc_ids = corpus.doc_ids
        self.index = BM25(corpus.texts, k1=config.k1, b=config.b, stemmer=config.stemmer)

    def run(self, queries: Sequence[str], previous: None = None) -> list[Ranking]:
        return [Ranking([self.doc_ids[i] for i in top], scores)
                for top, scores in self.index.search_scored(list(queries), self.k)]


class DenseRetriever(_Stage):
    def __init__(self, config: DenseStage, corpus: Corpus, storage: dict[str, Any] | None = None) -> None:
        from rayrank.funnel.dense import DenseEncoder, DenseIndex

        super().__init__(config)
        self.index = DenseIndex(config.index, storage)
        self.encoder = DenseEncoder(config.model, config.max_length, config.batch_size)
        self.index.check_model(self.encoder.resolved.name)

    def run(self, queries: Sequence[str], previous: None = None) -> list[Ranking]:
        vectors = self.encoder.encode(list(queries))
        if self.config.method == "hnsw":
            return self.index.search_hnsw(vectors, self.k, self.config.hnsw_m, self.config.ef_search)
        return self.index.search(vectors, self.k)


class LateInteractionRetriever(_Stage):
    def __init__(self, config: LateInteractionStage, corpus: Corpus, storage: dict[str, Any] | None = None) -> None:
        import rayrank
        from rayrank.index import IndexReader, IvfSearcher

        super().__init__(config)
        self.reader = IndexReader(config.index, storage)
        engine = config.engine.model_copy(update={"model": stage_model(config, self.reader.manifest)})
        self.scorer = rayrank.Reranker.from_config(engine).scorer
        self.reader.check_model(rayrank.resolve_model(engine.model_name).name)
        self.ivf = IvfSearcher(self.reader, config.nprobe, config.candidates) if config.method == "ivf" else None

    def run(self, queries: Sequence[str], previous: None = None) -> list[Ranking]:
        from rayrank.index import IvfSearcher, exact_search

        reader = self.reader.current()  # an index update (rayrank index add/delete) counts from the next call on
        if reader is not self.reader:
            self.reader = reader
            self.ivf = IvfSearcher(reader, self.config.nprobe, self.config.candidates) if self.ivf else None
        embeddings = self.scorer.encode_queries(list(queries))
        return self.ivf.search(embeddings, self.k) if self.ivf else exact_search(self.reader, embeddings, self.k)


class Fuser(_Stage):
    def previous(self, rankings: Mapping[str, list[Ranking]]) -> dict[str, list[Ranking]]:
        return {n: rankings[n] for n in self.inputs}

    def run(self, queries: Sequence[str], previous: Mapping[str, list[Ranking]]) -> list[Ranking]:
        from rayrank.funnel.fusion import rrf, zscore_fusion

        weights = [self.config.weights[n] for n in self.inputs]
        fused = []
        for q in range(len(queries)):
            lists = [(previous[n][q].doc_ids, previous[n][q].scores) for n in self.inputs]
            if self.config.method == "rrf":
                ids, scores = rrf(lists, weights, self.config.rrf_k)
            else:
                ids, scores = zscore_fusion(lists, weights)
            fused.append(Ranking(ids[:self.k], scores[:self.k]))
        return fused


class PairReranker(_Stage):
    """A cross-encoder or late-interaction scorer over each query's input list (one engine call for all)."""

    def __init__(self, config: RerankStage, corpus: Corpus, storage: dict[str, Any] | None = None) -> None:
        import rayrank

        super().__init__(config)
        self.corpus = corpus
        self.reranker = rayrank.Reranker.from_config(config.engine)
        self.reader = None
        if config.index:
            from rayrank.index import IndexReader

            self.reader = IndexReader(config.index, storage)
            self.reader.check_model(self.reranker.resolved.name)

    def run(self, queries: Sequence[str], previous: list[Ranking]) -> list[Ranking]:
        if self.reader is not None:  # a document deleted from the index is not ranked again, text or not
            self.reader = self.reader.current()
            if self.reader.deleted:
                previous = [Ranking([d for d in r.doc_ids if d not in self.reader.deleted],
                                    r.scores[[d not in self.reader.deleted for d in r.doc_ids]]) for r in previous]
        pair_queries = [q for q, r in zip(queries, previous) for _ in r.doc_ids]
        doc_ids = [d for r in previous for d in r.doc_ids]
        texts = self.corpus.texts_of(doc_ids)
        if self.reader is not None:
            from rayrank.index import score_from_index

            scores, missing = score_from_index(self.reranker.scorer, self.reader, pair_queries, doc_ids, texts)
            self.counts["index_missing"] += missing
        else:
            result = self.reranker.scorer.score_pairs(pair_queries, texts)
            scores = result.scores
            self.counts["truncated"] += result.truncated
        rankings, start = [], 0
        for r in previous:
            stop = start + len(r.doc_ids)
            rankings.append(Ranking.of(r.doc_ids, scores[start:stop], self.k))
            start = stop
        return rankings


class LlmReranker(_Stage):
    """Listwise reordering of each query's input list by an LLM; on a failure the input order stands.

    Scores are positions (the best of n documents scores n), as the model returns an order only.
    `counts`: `calls`, `repaired` answers, and `failure:KIND` per query that kept its input order.
    """

    def __init__(self, config: LlmStage, corpus: Corpus) -> None:
        from rayrank.funnel.llm import ListwiseReranker

        super().__init__(config)
        self.corpus = corpus
        self.client = ListwiseReranker(config.settings)

    def run(self, queries: Sequence[str], previous: list[Ranking]) -> list[Ranking]:
        rankings = []
        for query, ranking in zip(queries, previous):
            outcome = self.client.rerank(query, ranking.doc_ids, self.corpus.texts_of(ranking.doc_ids))
            self.counts["calls"] += outcome.calls
            self.counts["repaired"] += outcome.repaired
            if outcome.failure:
                self.counts[f"failure:{outcome.failure}"] += 1
            order = outcome.order[:self.k]
            rankings.append(Ranking(order, np.arange(len(outcome.order), len(outcome.order) - len(order), -1,
                                                     dtype=np.float32)))
        return rankings


def stage_model(stage: DenseStage | LateInteractionStage | RerankStage, manifest: dict[str, Any]) -> str:
    """The model a stage encodes queries with, given its index's manifest (a late-interaction stage without
    `engine.model` takes the index's)."""
    if isinstance(stage, DenseStage):
        return stage.model
    if isinstance(stage, LateInteractionStage):
        return stage.engine.model or manifest["model"]["name"]
    return stage.engine.model_name


def check_stages(config: FunnelConfig) -> None:
    """Refuse a stage that needs a package not installed (MissingExtraError), or whose existing index is of the
    other kind (dense, late interaction) or was built by another model (IndexFormatError), reading manifests
    only; a missing index is left to whoever builds it (the batch job does, with the stage's own model)."""
    from rayrank.extras import engine_needs, need
    from rayrank.funnel.dense import read_dense_manifest
    from rayrank.index.format import MANIFEST, check_model, read_manifest
    from rayrank.io.storage import filesystem, join, storage_options
    from rayrank.models import resolve_model

    for stage in config.stages:
        if isinstance(stage, Bm25Stage) and stage.stemmer == "english":
            need("Stemmer")
        if isinstance(stage, DenseStage) and stage.method == "hnsw":
            need("faiss")
        if isinstance(stage, (LateInteractionStage, RerankStage)):
            need(*engine_needs(stage.engine))
        url = getattr(stage, "index", None)
        if not url:
            continue
        fs, root = filesystem(url, storage_options(config.storage, url))
        if fs.exists(join(root, MANIFEST)):
            manifest = read_dense_manifest(fs, root, url) if isinstance(stage, DenseStage) else read_manifest(fs, root)
            check_model(manifest, url, resolve_model(stage_model(stage, manifest)).name)


def build_stage(config: FunnelConfig, name: str, corpus: Corpus) -> _Stage:
    """The stage called `name`, built from its config and the corpus (its index must exist)."""
    stage = next((s for s in config.stages if s.name == name), None)
    if stage is None:
        raise KeyError(f"no stage named {name!r}; stages: {', '.join(s.name for s in config.stages)}")
    if isinstance(stage, Bm25Stage):
        built: _Stage = Bm25Retriever(stage, corpus)
    elif isinstance(stage, DenseStage):
        built = DenseRetriever(stage, corpus, config.storage)
    elif isinstance(stage, LateInteractionStage):
        built = LateInteractionRetriever(stage, corpus, config.storage)
    elif isinstance(stage, FuseStage):
        built = Fuser(stage)
    elif isinstance(stage, LlmStage):
        built = LlmReranker(stage, corpus)
    else:
        built = PairReranker(stage, corpus, config.storage)
    built.inputs = config.inputs_of(stage)
    return built


@dataclass
class FunnelRun:
    """Every stage's rankings (config order), its wall seconds and its count increments for one batch."""

    rankings: dict[str, list[Ranking]]
    seconds: dict[str, float]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


class Funnel:
    """Every stage of a FunnelConfig, built once; `run(queries)` passes a batch of queries through them all."""

    def __init__(self, config: FunnelConfig, corpus: Corpus | None = None) -> None:
        self.config = config
        self.corpus = corpus if corpus is not None else load_corpus(config.corpus, config.storage)
        self.stages = {s.name: build_stage(config, s.name, self.corpus) for s in config.stages}
        self.final = config.stages[-1].name

    def run(self, queries: Sequence[str]) -> FunnelRun:
        queries = list(queries)
        result = FunnelRun({}, {}, {})
        if not queries:
            return FunnelRun({n: [] for n in self.stages}, {n: 0.0 for n in self.stages},
                             {n: {} for n in self.stages})
        for name, stage in self.stages.items():
            before = Counter(stage.counts)
            started = time.perf_counter()
            result.rankings[name] = stage.run(queries, stage.previous(result.rankings))
            result.seconds[name] = time.perf_counter() - started
            result.counts[name] = dict(stage.counts - before)
        return result
