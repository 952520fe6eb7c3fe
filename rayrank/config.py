"""Pydantic settings for the engine; jobs and the Serve app embed `EngineConfig` in their own specs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError, field_validator,
                      model_validator)

from rayrank.errors import ConfigError
from rayrank.models import DEFAULT_CROSS_ENCODER, DEFAULT_LATE_INTERACTION

ScorerName = Literal["cross-encoder", "late-interaction"]


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a YAML file must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class EngineConfig(StrictModel):
    """What model to run and how to batch it.

    `max_tokens_per_batch` counts padding (rows × longest row); `max_batch_size` caps rows;
    `backend: auto` runs the fastest near-exact setting this machine measured for the model (see
    `rayrank.backends.auto`); `dtype: bfloat16` on CPU is near-exact where AVX-512-BF16/AMX exist.
    `batch_overhead_tokens` is what one more batch costs in tokens, so the planner cuts a batch where
    that saves more padding (default: 32 on CPU, where a MiniLM call costs about 30 tokens' time
    beyond its tokens; 2048 on CUDA, where small batches leave the GPU idle).

    Documents longer than `max_length` are truncated (`long_documents: truncate`, counted), or
    (`chunk`) cut into windows of `chunk_tokens` document tokens (default: all that fit) overlapping
    by `chunk_overlap_tokens`, at most `max_chunks_per_doc` per document: a cross-encoder scores every
    (query, window) pair in the same token-budget batches and keeps the best window's score; late
    interaction encodes the windows and scores MaxSim over the union of their tokens.

    Decoder rerankers (a ForCausalLM or LogitScore checkpoint, see `rayrank.scoring.decoder`) read
    `instruction` (default: the prompt's own; a request may give another) and take their prompt
    from the checkpoint's chat template, or from `prompt_template`, a built-in family recipe
    (`rayrank.prompts.FAMILIES`). Left unset, their `max_tokens_per_batch` is 4096 and `dtype` bf16 on
    CUDA. `trust_remote_code` lets a checkpoint with custom code (an `auto_map`) run its code.
    """

    model: str | None = None
    scorer: ScorerName = "cross-encoder"
    backend: Literal["auto", "torch", "onnx", "openvino"] = "auto"
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    quantize: Literal["none", "int8"] = "none"
    max_length: PositiveInt | None = None
    query_max_length: PositiveInt | None = None
    long_documents: Literal["truncate", "chunk"] = "truncate"
    chunk_tokens: PositiveInt | None = None
    chunk_overlap_tokens: NonNegativeInt = 16
    max_chunks_per_doc: PositiveInt = 8
    max_tokens_per_batch: PositiveInt = 8192
    max_batch_size: PositiveInt = 128
    batch_overhead_tokens: NonNegativeInt | None = None
    threads: PositiveInt | None = None
    cache_dir: str | None = None
    instruction: str | None = Field(None, min_length=1)
    prompt_template: Literal["qwen3-reranker", "mxbai-rerank-v2", "bge-reranker-v2-gemma"] | None = None
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> EngineConfig:
        if self.chunk_tokens is not None and self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError(f"chunk_overlap_tokens ({self.chunk_overlap_tokens}) must be below chunk_tokens "
                             f"({self.chunk_tokens})")
        return self

    @model_validator(mode="after")
    def _int8_needs_an_int8_backend(self) -> EngineConfig:
        """Refused here, so a job says so before Ray starts rather than from every actor that loads the model."""
        if self.backend == "torch" and self.quantize != "none":
            raise ValueError(f"quantize={self.quantize!r} needs backend='onnx' or 'openvino' (or 'auto', which then "
                             "runs onnx); the torch backend runs fp32/fp16/bf16: drop quantize or change backend")
        return self

    @property
    def model_name(self) -> str:
        if self.model:
            return self.model
        return DEFAULT_CROSS_ENCODER if self.scorer == "cross-encoder" else DEFAULT_LATE_INTERACTION


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, each naming the dotted key, e.g. `engine.max_batch_size: ...`."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
    return f"invalid configuration in {source}:\n" + "\n".join(lines)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping document is a ConfigError naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a YAML mapping of keys to values, got {type(data).__name__}.")
    return data


def merge_flags(data: dict[str, Any], flags: dict[str, Any], sections: dict[str, dict[str, Any]],
                source: str) -> dict[str, Any]:
    """Overlay command-line flags on a config mapping: every flag given (not None) wins over the file.

    `sections` (e.g. `engine`, `cluster`) are nested mappings merged key by key, so a flag changes
    one key of the file's section and keeps the others.
    """
    data = {**data, **{k: v for k, v in flags.items() if v is not None}}
    for section, values in sections.items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            if not isinstance(data.get(section, {}), dict):
                raise ConfigError(f"{source}: `{section}` must be a mapping")
            data[section] = {**data.get(section, {}), **given}
    return data


def parse_config(model: type[StrictModel], data: dict[str, Any], source: str) -> Any:
    """Validate `data` into `model`, turning pydantic's error into a ConfigError naming each key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


class Columns(StrictModel):
    """Input column names, remappable per dataset (e.g. `text: passage`)."""

    query_id: str = "query_id"
    query: str = "query"
    doc_id: str = "doc_id"
    text: str = "text"
    candidates: str = "candidates"


class ClusterConfig(StrictModel):
    """Where and how wide a Ray job runs. No `address` starts an embedded local Ray."""

    address: str | None = None
    actors: tuple[PositiveInt, PositiveInt] = (1, 2)
    cpus_per_actor: float = Field(1.0, ge=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    # Shards an actor reads, validates and tokenizes while another holds its model (jobs/_phases.py).
    prefetch_shards: NonNegativeInt = 1
    # Scoring starts once MIN actors have loaded the model, so work spreads from the first shard; a
    # cluster that cannot provide them in time (no GPU node comes up) fails with a clear error.
    wait_for_actors_s: PositiveInt = 900

    @field_validator("actors", mode="before")
    @classmethod
    def _parse_actors(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = value.split(",")
            if len(parts) == 1:
                parts = parts * 2
            if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
                raise ValueError(f"expected MIN,MAX actor counts like '1,4', got {value!r}")
            return tuple(int(p) for p in parts)
        if isinstance(value, int):
            return (value, value)
        return value

    @model_validator(mode="after")
    def _ordered(self) -> ClusterConfig:
        if self.actors[0] > self.actors[1]:
            raise ValueError(f"actors: MIN must not exceed MAX, got {self.actors[0]},{self.actors[1]}")
        return self


def _index_needs_late_interaction(config: Any) -> Any:
    """A reranker that reads documents from an `index` (the rerank job, a funnel rerank stage) must score
    by late interaction: the index holds token embeddings."""
    if config.index and config.engine.scorer != "late-interaction":
        raise ValueError(f"index: reading documents from an index needs engine.scorer: late-interaction, "
                         f"got {config.engine.scorer!r}")
    return config


class IvfSettings(StrictModel):
    """IVF search over a late-interaction index (`rayrank search`, a funnel late-interaction stage).

    IvfSearcher's defaults; candidates: None scores max(8·k, k·sqrt(documents)/32) documents exactly
    per query (index.search.default_candidates).
    """

    nprobe: PositiveInt = 2
    candidates: PositiveInt | None = None


class CacheSettings(StrictModel):
    """The rerank job's score cache across runs (`rayrank.score_cache`): pairs scored by an earlier run
    with the same model setting are read, not scored; new ones are written back. `cache: DIR` is short
    for `cache: {dir: DIR}`.

    After the job, `max_age_days` and `max_bytes` (when set) prune DIR: compaction, then entries older
    than `max_age_days`, then the oldest hours until DIR holds at most `max_bytes`.
    `max_memory_bytes` bounds the decoded cache an actor keeps between shards (28 bytes an entry).
    """

    dir: str = Field(min_length=1)
    max_age_days: float | None = Field(None, gt=0)
    max_bytes: PositiveInt | None = None
    max_memory_bytes: PositiveInt = 256 << 20

    @model_validator(mode="before")
    @classmethod
    def _directory_alone(cls, value: Any) -> Any:
        return {"dir": value} if isinstance(value, str) else value


class CorpusSettings(StrictModel):
    """Document text for candidates given by id: Parquet `doc_id`, `text` (names remappable), local or s3://.

    `path: DIR` alone may be written `corpus: DIR`. See `rayrank.jobs.rerank` for how the join runs.
    """

    path: str = Field(min_length=1)
    doc_id: str = "doc_id"
    text: str = "text"

    @model_validator(mode="before")
    @classmethod
    def _path_alone(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


class RerankJobConfig(StrictModel):
    """The nightly rerank job: every key can come from YAML, and CLI flags override the file.

    `corpus` joins document text by `doc_id` to an input without `text`; `corpus_bucket_rows` sizes
    the join's buckets (corpus rows per bucket, and so what one actor holds). `queries` gives query
    text by `query_id` when INPUT is a TREC run file. `cache` keeps scores across runs.
    """

    input: str | None = None
    output: str | None = None
    engine: EngineConfig = EngineConfig()
    columns: Columns = Columns()
    cluster: ClusterConfig = ClusterConfig()
    top_n: PositiveInt | None = None
    shard_rows: PositiveInt = 50_000
    rows_per_output_file: PositiveInt = 1_000_000
    keep_text: bool = False
    overwrite: bool = False
    storage: dict[str, Any] = {}
    index: str | None = None  # late-interaction: read document embeddings from this index (rayrank index)
    cache: CacheSettings | None = None
    corpus: CorpusSettings | None = None
    corpus_bucket_rows: PositiveInt = 200_000
    queries: str | None = None
    # INPUT as a Hive-partitioned dataset (KEY=VALUE/ folders): `new` runs the partitions OUTPUT's ledger
    # lacks for this model setting, `KEY=VALUE` one of them; each is published as OUTPUT/KEY=VALUE/.
    partitions: str | None = Field(None, pattern=r"^(new|[^=/\s]+=[^/\s]+)$")
    overwrite_partition: bool = False

    _index = model_validator(mode="after")(_index_needs_late_interaction)

    @model_validator(mode="after")
    def _overwrite_names_a_partition(self) -> RerankJobConfig:
        if self.overwrite_partition and (self.partitions is None or self.partitions == "new"):
            raise ValueError("overwrite_partition replaces one published partition: name it with partitions: "
                             f"KEY=VALUE (e.g. dt=2026-12-06), got partitions={self.partitions!r}")
        return self


def _late_interaction_engine(data: Any) -> Any:
    """Index and search configs default the engine's scorer to late-interaction, and accept no other."""
    if isinstance(data, dict):
        engine = data.get("engine")
        if engine is None or isinstance(engine, dict):
            data = {**data, "engine": {"scorer": "late-interaction", **(engine or {})}}
    return data


class IndexJobConfig(StrictModel):
    """`rayrank index`: a corpus (Parquet `doc_id`, `text`) into a late-interaction index directory.

    `compression: residual` stores centroid ids + `nbits` bits per dimension instead of float16;
    `pool_factor` K > 1 keeps about 1/K of each document's tokens (hierarchical pooling). The codec
    (k-means `centroids`, default a power of two up to 4·sqrt(corpus tokens)) is trained on `sample_docs`
    documents and is always built, because the IVF search stage uses its centroids.
    """

    input: str | None = None
    output: str | None = None
    engine: EngineConfig = EngineConfig(scorer="late-interaction")
    columns: Columns = Columns()
    cluster: ClusterConfig = ClusterConfig()
    compression: Literal["none", "residual"] = "none"
    nbits: Literal[1, 2, 4, 8] = 2
    pool_factor: PositiveInt = 1
    centroids: PositiveInt | None = None
    sample_docs: PositiveInt = 1024
    shard_rows: PositiveInt = 10_000
    overwrite: bool = False
    storage: dict[str, Any] = {}

    _engine = model_validator(mode="before")(_late_interaction_engine)

    @model_validator(mode="after")
    def _late_interaction(self) -> IndexJobConfig:
        if self.engine.scorer != "late-interaction":
            raise ValueError("engine.scorer: an index holds late-interaction token embeddings; "
                             f"use scorer: late-interaction, got {self.engine.scorer!r}")
        return self


class SearchJobConfig(IvfSettings):
    """`rayrank search`: top-k documents of the whole index per query (exact, or IVF + exact)."""

    index: str | None = None
    input: str | None = None
    output: str | None = None
    engine: EngineConfig = EngineConfig(scorer="late-interaction")
    columns: Columns = Columns()
    k: PositiveInt = 100
    method: Literal["exact", "ivf"] = "exact"
    max_block_mb: PositiveInt = 256
    overwrite: bool = False
    storage: dict[str, Any] = {}

    _engine = model_validator(mode="before")(_late_interaction_engine)
