"""Pydantic specs for the lab commands; every key can come from YAML (configs/lab.*.yaml), flags override."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from rayrank.config import ClusterConfig, EngineConfig, ScorerName, StrictModel
from rayrank.models import DEFAULT_LATE_INTERACTION

Loss = Literal["bce", "mse", "margin", "listwise"]


@dataclass(frozen=True)
class ModelSpec:
    """`[SCORER:]MODEL`, e.g. `late-interaction:sentence-transformers/all-MiniLM-L6-v2`; default cross-encoder."""

    model: str
    scorer: str = "cross-encoder"

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        prefix, sep, rest = text.partition(":")
        if sep and prefix in get_args(ScorerName):
            return cls(rest, prefix)
        return cls(text)

    @property
    def label(self) -> str:
        return f"{self.model} ({self.scorer})"


class MiningConfig(StrictModel):
    """Examples from judged queries: positives from qrels, hard negatives from a ranked list.

    The ranked list is `candidates` (a long table, ordered by `rank_column`) or, without it, BM25
    over `corpus`.
    """

    queries: str
    corpus: str
    qrels: str
    candidates: str | None = None
    rank_column: str = "bm25_rank"
    negatives: PositiveInt = 4
    depth: PositiveInt = 30
    skip_top: NonNegativeInt = 0
    seed: int = 0


class DataConfig(StrictModel):
    """Exactly one source: `pairs` (query, text, label or score), `triples` (query, positive, negative), `mine`."""

    pairs: str | None = None
    triples: str | None = None
    mine: MiningConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        given = [k for k in ("pairs", "triples", "mine") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of data.pairs, data.triples, data.mine; got {given or 'none'}")
        return self


class TrainConfig(StrictModel):
    """Optimizer and schedule. `max_steps` > 0 overrides `epochs`; `max_length` caps tokens per pair;
    `max_minutes` stops training (and saves) once that much wall time has passed;
    `freeze_embeddings` keeps the word-embedding matrix fixed (half of MiniLM's weights: AdamW then
    skips them, about 20% faster a step on CPU, and the vocabulary keeps its pretrained meaning);
    `head_learning_rate` trains the classification head (and BERT's pooler) at its own rate, since a
    fresh head learns too slowly at a backbone's rate; `list_size` is documents per list for the
    listwise loss, where `batch_size` counts lists."""

    epochs: PositiveFloat = 1.0
    max_steps: int = -1
    batch_size: PositiveInt = 16
    learning_rate: PositiveFloat = 2e-5
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    max_length: PositiveInt | None = 256
    margin: PositiveFloat = 1.0
    seed: int = 0
    logging_steps: PositiveInt = 10
    max_minutes: PositiveFloat | None = None
    threads: PositiveInt | None = None
    freeze_embeddings: bool = False
    head_learning_rate: PositiveFloat | None = None
    list_size: int = Field(16, ge=2)


class TrainClusterConfig(StrictModel):
    """`workers` > 1 trains data-parallel on Ray Train; `address` joins a cluster (default: local Ray)."""

    workers: PositiveInt = 1
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    address: str | None = None


class FinetuneConfig(StrictModel):
    """`rayrank finetune`: warm-start a 1-logit cross-encoder from `model` and train it on `data` with `loss`.

    Losses: `bce` on labelled pairs; `mse` on teacher scores (pairs with a `score` column);
    `margin`, a pairwise hinge max(0, margin - (s(q, pos) - s(q, neg))) on triples; `listwise`,
    ListNet (cross-entropy between the softmax of the labels and of the scores over each list of a
    query's documents) on teacher scores or labels: it learns the order within a query and not each
    query's scale, which a pointwise loss spends steps on.
    """

    model: str = DEFAULT_LATE_INTERACTION
    output: str | None = None
    loss: Loss = "bce"
    data: DataConfig
    train: TrainConfig = TrainConfig()
    cluster: TrainClusterConfig = TrainClusterConfig()
    overwrite: bool = False


class PairSourceConfig(StrictModel):
    """Pairs for a teacher to label: a long `candidates` table, or BM25's top `depth` over `corpus` per query."""

    candidates: str | None = None
    queries: str | None = None
    corpus: str | None = None
    depth: PositiveInt = 20

    @model_validator(mode="after")
    def _one_source(self) -> PairSourceConfig:
        if bool(self.candidates) == bool(self.queries and self.corpus):
            raise ValueError("give data.candidates, or data.queries and data.corpus (BM25 pairs), not both")
        return self


class DistillConfig(StrictModel):
    """`rayrank distill`: `teacher` scores pairs with the batch job; a student learns the scores.

    The target is the teacher's per-query z-score (`rayrank.lab.distill.teacher_targets`), optionally
    fused with `blend` (pairs-table column → weight, e.g. `{bm25_score: 0.3}`) and raised by `gold_weight`
    on the pairs `qrels` judges relevant. A `cross-encoder` student learns it with `loss` (`mse`, or
    `listwise`: ListNet over lists of `train.list_size` documents of a query) on the finetune path;
    a `late-interaction` (bi-encoder) student with Margin-MSE on MaxSim; a `dense` (single-vector)
    student, the funnel's `dense` stage model, with `mse` (sentence-transformers' CosineSimilarityLoss:
    the cosine regresses the sigmoid of the target, the reference recipe) or `margin-mse` (MarginMSELoss:
    cosine margins regress target margins, scaled by 0.1 into cosine's range). `teacher_index` (a `rayrank
    index` of the corpus) lets a late-interaction teacher read document embeddings instead of encoding
    each pair's document.
    """

    teacher: EngineConfig
    teacher_cluster: ClusterConfig = ClusterConfig()
    teacher_index: str | None = None
    student: str = DEFAULT_LATE_INTERACTION
    student_kind: Literal["cross-encoder", "late-interaction", "dense"] = "cross-encoder"
    loss: Literal["mse", "listwise", "margin-mse"] = "mse"
    blend: dict[str, float] = {}
    qrels: str | None = None
    gold_weight: float = Field(2.0, ge=0)
    output: str | None = None
    labels: str | None = None
    data: PairSourceConfig
    train: TrainConfig = TrainConfig()
    cluster: TrainClusterConfig = TrainClusterConfig()
    overwrite: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        if self.teacher_index and self.teacher.scorer != "late-interaction":
            raise ValueError("teacher_index: an index holds late-interaction embeddings; the teacher must be "
                             "`late-interaction:MODEL`.")
        if self.student_kind == "late-interaction" and self.loss != "mse":
            raise ValueError("loss: the late-interaction student trains with Margin-MSE on MaxSim; `listwise` "
                             "is for a cross-encoder student.")
        if self.student_kind == "dense" and self.loss == "listwise":
            raise ValueError("loss: a dense student trains with `mse` (CosineSimilarityLoss on the target) or "
                             "`margin-mse` (MarginMSELoss on target margins); `listwise` is for a cross-encoder.")
        if self.student_kind != "dense" and self.loss == "margin-mse":
            raise ValueError("loss: `margin-mse` is the dense student's; give student_kind: dense.")
        return self
