"""Fine-tuning a cross-encoder with sentence-transformers' `CrossEncoderTrainer` (no Ray here).

`train` runs the same way on one process and inside each Ray Train worker (jobs/finetune.py): the
Hugging Face trainer sees the process group Ray Train set up and shards batches across workers.
The saved directory is a plain `BertForSequenceClassification`-style checkpoint with one logit,
which the engine, the batch job and the Serve app load unchanged.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from sentence_transformers.cross_encoder import CrossEncoder
from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss, ListNetLoss, MarginMSELoss, MSELoss
from transformers import TrainerCallback

from rayrank.errors import InvalidInputError
from rayrank.evaluate import load_qrels
from rayrank.extras import require
from rayrank.lab import data
from rayrank.lab.config import FinetuneConfig, MiningConfig
from rayrank.models import resolve_model

logger = logging.getLogger(__name__)


class PairwiseMarginLoss(MarginMSELoss):
    """Hinge on (query, positive, negative): mean of max(0, margin - (s(q, pos) - s(q, neg))).

    Needs no teacher: only the order of the two documents. Reuses MarginMSELoss's pair scoring.
    """

    def __init__(self, model: CrossEncoder, margin: float = 1.0) -> None:
        super().__init__(model)
        self.margin = margin

    def forward(self, inputs: list[list[str]], labels: Any = None, prompt: str | None = None,
                task: str | None = None) -> torch.Tensor:
        query, positive, negative = inputs[:3]
        pos = self.logits_from_pairs(list(zip(query, positive)), prompt=prompt, task=task)
        neg = self.logits_from_pairs(list(zip(query, negative)), prompt=prompt, task=task)
        return torch.relu(self.margin - (pos - neg)).mean()

    def get_config_dict(self) -> dict[str, Any]:
        return {"margin": self.margin}


class TimeLimit(TrainerCallback):
    """Stop after `minutes` of training; the model trained so far is saved as usual."""

    def __init__(self, minutes: float) -> None:
        self.deadline = time.monotonic() + 60 * minutes

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() > self.deadline:
            control.should_training_stop = True
        return control


def mined_examples(mine: MiningConfig) -> list[data.Example]:
    """Queries + corpus + qrels, with hard negatives from the candidates table or BM25 over the corpus."""
    queries, corpus = data.read_queries(mine.queries), data.read_corpus(mine.corpus)
    qrels = load_qrels(mine.qrels)
    judged = {q: text for q, text in queries.items() if q in qrels}
    ranked = (data.ranked_from_candidates(mine.candidates, mine.rank_column) if mine.candidates
              else data.ranked_from_bm25(judged, corpus, mine.depth))
    return data.mine(judged, corpus, qrels, ranked, mine.negatives, mine.depth, mine.skip_top, mine.seed)


def training_columns(config: FinetuneConfig) -> dict[str, list]:
    """The dataset columns the configured loss reads, in the order the loss expects them."""
    source, loss = config.data, config.loss
    if loss == "margin":
        if source.pairs:
            raise InvalidInputError("loss margin trains on (query, positive, negative): give data.triples or "
                                    "data.mine, not data.pairs.")
        if source.triples:
            table = data.read_table(source.triples, ["query", "positive", "negative"], "triples")
            return {c: table[c].to_pylist() for c in ("query", "positive", "negative")}
        return data.to_triples(mined_examples(source.mine))
    if source.triples:
        raise InvalidInputError(f"loss {loss} trains on pairs: give data.pairs or data.mine, not data.triples.")
    if loss == "listwise":
        return listwise_columns(config)
    if source.mine:
        if loss == "mse":
            raise InvalidInputError("loss mse learns teacher scores: give data.pairs with a `score` column "
                                    "(or use `rayrank distill`, which labels mined pairs with a teacher).")
        return data.to_pairs(mined_examples(source.mine))
    label = "label" if loss == "bce" else "score"
    table = data.read_table(source.pairs, ["query", "text", label], "pairs")
    return {"query": table["query"].to_pylist(), "document": table["text"].to_pylist(),
            "label": [float(x) for x in table[label].to_pylist()]}


def listwise_columns(config: FinetuneConfig) -> dict[str, list]:
    """Lists of `train.list_size` documents per query (see `data.to_lists`): from a pairs file grouped by
    `query_id` (else by query text) with a `score` or `label` column, or mined positives with their negatives."""
    source, size = config.data, config.train.list_size
    if source.mine:
        pairs = data.to_pairs(mined_examples(source.mine))
        return data.to_lists(pairs["query"], pairs["query"], pairs["document"], pairs["label"], size,
                             seed=config.train.seed)
    names = pq.read_schema(source.pairs).names
    label = next((c for c in ("score", "label") if c in names), "score")
    table = data.read_table(source.pairs, ["query", "text", label], "pairs")
    queries = table["query"].to_pylist()
    groups = list(map(str, table["query_id"].to_pylist())) if "query_id" in names else queries
    return data.to_lists(groups, queries, table["text"].to_pylist(), [float(x) for x in table[label].to_pylist()],
                         size, seed=config.train.seed)


def load_student(model: str, max_length: int | None) -> CrossEncoder:
    """A 1-logit cross-encoder warm-started from any checkpoint: a cross-encoder keeps its head, a
    bi-encoder or plain backbone (e.g. the bundled all-MiniLM-L6-v2) gets a fresh one."""
    path = resolve_model(model).path
    return CrossEncoder(str(path), num_labels=1, max_length=max_length, local_files_only=True)


def make_loss(name: str, model: CrossEncoder, margin: float = 1.0) -> torch.nn.Module:
    if name == "bce":
        return BinaryCrossEntropyLoss(model)
    if name == "mse":
        return MSELoss(model)
    if name == "listwise":
        # Every pair of the batch's lists in one forward pass (the default is one pair per list per pass).
        return ListNetLoss(model, mini_batch_size=0)
    return PairwiseMarginLoss(model, margin)


def head_learning_rates(model: CrossEncoder, rate: float | None) -> dict[str, float]:
    """`learning_rate_mapping` that gives the classification head (and BERT's pooler, which feeds it) its own
    rate: a fresh head starts at random and learns too slowly at a backbone's fine-tuning rate."""
    if rate is None:
        return {}
    names = [n for n, _ in model.model.named_parameters()]
    return {rf"\.{part}\.": rate for part in ("classifier", "pooler") if any(f"{part}." in n for n in names)}


def train(config: FinetuneConfig, columns: dict[str, list], save_to: str | Path | None,
          callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train on `columns`; save the model to `save_to` (on the main process only) and return a summary.

    Returns:
        {"examples", "steps", "seconds", "losses" (the logged training losses, in order), "train_loss"}.
    """
    Dataset = require("datasets").Dataset
    require("accelerate")  # the trainer's; without it transformers fails deep inside with its own message
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments

    t = config.train
    if t.threads:
        torch.set_num_threads(t.threads)
    if not columns or not len(next(iter(columns.values()))):
        raise InvalidInputError("no training examples: the data source produced 0 rows.")
    torch.manual_seed(t.seed)
    model = load_student(config.model, t.max_length)
    if t.freeze_embeddings:
        model.model.get_input_embeddings().weight.requires_grad_(False)
    dataset = Dataset.from_dict(columns)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rayrank-finetune-") as scratch:
        args = CrossEncoderTrainingArguments(
            output_dir=scratch, num_train_epochs=t.epochs, max_steps=t.max_steps,
            per_device_train_batch_size=t.batch_size, learning_rate=t.learning_rate, warmup_steps=t.warmup_ratio,
            weight_decay=t.weight_decay, seed=t.seed, logging_steps=t.logging_steps, save_strategy="no",
            report_to="none", use_cpu=not torch.cuda.is_available(), dataloader_drop_last=False,
            disable_tqdm=True, learning_rate_mapping=head_learning_rates(model, t.head_learning_rate),
            # Under Ray Train's DDP every parameter is used each step; searching for unused ones makes
            # DDP mark the classifier ready twice and fail.
            ddp_find_unused_parameters=False)
        trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=dataset,
                                      loss=make_loss(config.loss, model, t.margin),
                                      callbacks=[*callbacks, *([TimeLimit(t.max_minutes)] if t.max_minutes else [])])
        output = trainer.train()
    if save_to is not None and trainer.is_world_process_zero():
        model.save_pretrained(str(save_to))
    losses = [round(log["loss"], 6) for log in trainer.state.log_history if "loss" in log]
    return {"examples": len(dataset), "steps": trainer.state.global_step,
            "seconds": round(time.perf_counter() - started, 1), "losses": losses,
            "train_loss": round(float(output.training_loss), 6)}
