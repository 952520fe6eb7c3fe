"""`FunnelConfig`: a corpus and an ordered list of stages, validated before any work starts.

Every stage has `kind`, `name` (unique; its output folder and its `stage_ranks` field) and `k` (how
many documents it passes on). Retrieval stages (`bm25`, `dense`, `late-interaction`) search the whole
corpus; `fuse` combines the lists of named earlier stages; `rerank` and `llm` reorder the list of one
earlier stage (`input`, default the stage just before) and pass on its best `k`.

Relative paths (corpus, indexes) are resolved against the current working directory, like every
other path a rayrank command takes: run from the repository root, `../shared/...` is the shared data.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pyarrow.parquet as pq
from pydantic import Field, PositiveFloat, PositiveInt, ValidationError, field_validator, model_validator

from rayrank.config import (ClusterConfig, ConfigError, EngineConfig, IvfSettings, StrictModel,
                            _index_needs_late_interaction, _late_interaction_engine, format_validation_error, load_yaml)
from rayrank.funnel.llm import LlmSettings

RETRIEVAL = ("bm25", "dense", "late-interaction")


class CorpusConfig(StrictModel):
    """The documents every retrieval stage searches: Parquet `doc_id`, `text`, optional `title`.

    With `title` present (and `use_title`), a document reads `title + " " + text` everywhere.
    """

    path: str
    doc_id: str = "doc_id"
    text: str = "text"
    title: str = "title"
    use_title: bool = True


class StageBase(StrictModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    k: PositiveInt


class Bm25Stage(StageBase):
    """Okapi BM25 over the corpus with `bm25s` (Lucene's idf and length normalisation)."""

    kind: Literal["bm25"]
    k1: PositiveFloat = 0.9
    b: float = Field(0.4, ge=0, le=1)
    stemmer: Literal["english", "none"] = "english"


class DenseStage(StageBase):
    """Single-vector bi-encoder: the model's own pooling (mean pooling for a bare encoder), L2-normalised.

    `index` is a dense index directory (`rayrank dense-index`); the funnel job builds it when missing.
    `method: exact` is a matmul over every vector; `hnsw` is faiss' graph index (approximate, built in
    memory when the stage loads).
    """

    kind: Literal["dense"]
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    index: str
    method: Literal["exact", "hnsw"] = "exact"
    hnsw_m: PositiveInt = 32
    ef_search: PositiveInt = 128
    max_length: PositiveInt | None = None
    batch_size: PositiveInt = 32


class LateInteractionStage(StageBase, IvfSettings):
    """Top-k MaxSim over a late-interaction index (`rayrank index`), exact or IVF candidates."""

    kind: Literal["late-interaction"]
    index: str
    engine: EngineConfig = EngineConfig(scorer="late-interaction")
    method: Literal["exact", "ivf"] = "exact"

    _engine = model_validator(mode="before")(_late_interaction_engine)

    @field_validator("engine")
    @classmethod
    def _late_interaction(cls, engine: EngineConfig) -> EngineConfig:
        if engine.scorer != "late-interaction":
            raise ValueError(f"scorer must be late-interaction for this stage, got {engine.scorer!r}")
        return engine


class FuseStage(StageBase):
    """Reciprocal-rank (`rrf`: Σ w / (rrf_k + rank)) or per-query z-score (`zscore`: Σ w · z) fusion.

    `weights` names the stages fused (earlier stages) and each one's weight. Under `zscore` a document
    missing from a list counts that list's lowest z-score.
    """

    kind: Literal["fuse"]
    method: Literal["rrf", "zscore"] = "rrf"
    weights: dict[str, PositiveFloat] = Field(min_length=1)
    rrf_k: PositiveInt = 60


class RerankStage(StageBase):
    """A cross-encoder or late-interaction scorer over the `input` stage's list.

    Late interaction with `index` reads document token embeddings from that index (only queries
    are encoded); documents missing from it are encoded from the corpus text.
    """

    kind: Literal["rerank"]
    input: str | None = None
    engine: EngineConfig = EngineConfig()
    index: str | None = None

    _index = model_validator(mode="after")(_index_needs_late_interaction)


class LlmStage(StageBase, LlmSettings):
    """Listwise reranking of the `input` stage's list by an OpenAI-compatible endpoint (rayrank.funnel.llm):
    `url`, `model`, `api_key_env`, `window`, `stride`, `timeout_s`, ... as in `LlmSettings`."""

    kind: Literal["llm"]
    input: str | None = None

    @property
    def settings(self) -> LlmSettings:
        return LlmSettings.model_validate(self.model_dump(include=set(LlmSettings.model_fields)))


Stage = Annotated[Bm25Stage | DenseStage | LateInteractionStage | FuseStage | RerankStage | LlmStage,
                  Field(discriminator="kind")]


class FunnelConfig(StrictModel):
    """A funnel: the corpus, the stages in order, and the batch job's settings (`rayrank funnel`)."""

    corpus: CorpusConfig
    stages: list[Stage] = Field(min_length=1)
    cluster: ClusterConfig = ClusterConfig()
    shard_queries: PositiveInt = 64  # queries per unit of work and of resume
    overwrite: bool = False
    storage: dict[str, Any] = {}

    @model_validator(mode="after")
    def _ordered(self) -> FunnelConfig:
        """Names unique; fuse, rerank and llm read earlier stages only; k never grows along a chain."""
        seen: dict[str, StageBase] = {}
        for i, stage in enumerate(self.stages):
            key = f"stages.{i}"
            if stage.name in seen:
                raise ValueError(f"{key}.name: {stage.name!r} is used by an earlier stage; names must be unique")
            if stage.kind in ("rerank", "llm"):
                if not any(s.kind in RETRIEVAL for s in seen.values()):
                    raise ValueError(f"{key}.kind: a {stage.kind} stage reorders an earlier stage's list, but no "
                                     f"retrieval stage ({', '.join(RETRIEVAL)}) comes before it")
                source = stage.input or (self.stages[i - 1].name if i else None)
                if source not in seen:
                    raise ValueError(f"{key}.input: {source!r} is not an earlier stage")
                if stage.k > seen[source].k:
                    raise ValueError(f"{key}.k: {stage.k} is more than the {seen[source].k} documents its input "
                                     f"{source!r} passes on; k must not increase along the funnel")
            if stage.kind == "fuse":
                unknown = [n for n in stage.weights if n not in seen]
                if unknown:
                    raise ValueError(f"{key}.weights: {', '.join(map(repr, unknown))} not an earlier stage "
                                     f"(earlier: {', '.join(seen) or 'none'})")
                total = sum(seen[n].k for n in stage.weights)
                if stage.k > total:
                    raise ValueError(f"{key}.k: {stage.k} is more than the {total} documents its inputs pass on; "
                                     "k must not increase along the funnel")
            seen[stage.name] = stage
        return self

    def inputs_of(self, stage: StageBase) -> tuple[str, ...]:
        """The earlier stages whose lists `stage` reads: none (retrieval), the fused ones, or the one list a
        rerank or llm stage reorders (`input`, default the stage just before)."""
        if isinstance(stage, FuseStage):
            return tuple(stage.weights)
        if isinstance(stage, (RerankStage, LlmStage)):
            position = next(i for i, s in enumerate(self.stages) if s.name == stage.name)
            return (stage.input or self.stages[position - 1].name,)
        return ()

    def check_corpus(self) -> None:
        """The corpus file is readable Parquet with the id and text columns (a ConfigError naming the key)."""
        from rayrank.io.storage import filesystem, list_parquet, storage_options

        corpus = self.corpus
        try:
            fs, root = filesystem(corpus.path, storage_options(self.storage, corpus.path))
            files = list_parquet(fs, root)
            for path in files:
                with fs.open(path, "rb") as handle:
                    names = pq.ParquetFile(handle).schema_arrow.names
                for key in ("doc_id", "text"):
                    if getattr(corpus, key) not in names:
                        raise ConfigError(f"corpus.{key}: column {getattr(corpus, key)!r} is missing from {path} "
                                          f"(found: {', '.join(names)})")
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"corpus.path: cannot read {corpus.path!r} as Parquet ({exc})") from exc


def parse_funnel(data: dict[str, Any], source: str) -> FunnelConfig:
    """Validate a funnel mapping; a ConfigError names each bad key (`stages.2.k: ...`)."""
    try:
        return FunnelConfig.model_validate(data)
    except ValidationError as exc:
        # The stage-order checks see the whole model, so pydantic files them at the top level: their
        # messages start with the key themselves.
        own = [e for e in exc.errors() if not e["loc"] and e["type"] == "value_error"]
        if own:
            raise ConfigError(f"invalid configuration in {source}:\n" +
                              "\n".join(f"  {e['ctx']['error']}" for e in own)) from None
        raise ConfigError(format_validation_error(exc, source)) from None


def load_funnel_config(path: str) -> FunnelConfig:
    """Parse and check a funnel YAML file: every key, the stage order and the corpus columns."""
    config = parse_funnel(load_yaml(path), path)
    config.check_corpus()
    return config
