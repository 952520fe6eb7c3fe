"""Distillation helpers: teacher scores → student training data, and a late-interaction student.

Teacher scores are standardised per query (zero mean, unit spread) before a student learns them:
only the order within a query matters to a reranker, and a late-interaction teacher's MaxSim sums
and a cross-encoder's logits live on different scales.
"""

from __future__ import annotations

import random
import string
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayrank.extras import require
from rayrank.lab.config import TrainConfig
from rayrank.models import resolve_model


def standardize_per_query(query_ids: Sequence[str], scores: Sequence[float]) -> np.ndarray:
    """Each query's scores minus their mean, over their standard deviation (1 when constant).

    Example:
        >>> standardize_per_query(["a", "a", "b"], [1.0, 3.0, 5.0]).tolist()
        [-1.0, 1.0, 0.0]
    """
    scores = np.asarray(scores, dtype=np.float64)
    ids = np.asarray(query_ids)
    out = np.zeros_like(scores)
    for q in np.unique(ids):
        rows = ids == q
        spread = scores[rows].std()
        out[rows] = (scores[rows] - scores[rows].mean()) / (spread if spread > 0 else 1.0)
    return out.astype(np.float32)


def teacher_targets(query_ids: Sequence[str], teacher: Sequence[float],
                    blend: Mapping[str, tuple[float, Sequence[float]]] | None = None,
                    relevant: Sequence[bool] | None = None, gold_weight: float = 0.0) -> np.ndarray:
    """What a student learns: the teacher's per-query z-scores plus `weight` × the z-scores of each blended
    signal (name → (weight, values); e.g. BM25, whose lexical evidence a dense teacher lacks), standardised
    again; then judged-relevant pairs get `gold_weight` more, so the teacher's mistakes on them are not learnt.

    Example:
        >>> [round(float(x), 3) for x in teacher_targets(["q"] * 3, [3.0, 2.0, 1.0], relevant=[False, False, True],
        ...                                                  gold_weight=2.0)]
        [1.225, 0.0, 0.775]
    """
    target = standardize_per_query(query_ids, teacher)
    if blend:
        for weight, values in blend.values():
            target = target + weight * standardize_per_query(query_ids, values)
        target = standardize_per_query(query_ids, target)
    if relevant is not None and gold_weight:
        target = target + gold_weight * np.asarray(relevant, dtype=np.float32)
    return target.astype(np.float32)


def margin_triples(query_ids: Sequence[str], queries: Sequence[str], texts: Sequence[str], scores: Sequence[float],
                   per_document: int = 1, seed: int = 0) -> dict[str, list]:
    """(query, document_a, document_b, label = score_a − score_b): each document paired with
    `per_document` random other documents of its query, for Margin-MSE."""
    rng = random.Random(seed)
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(query_ids):
        groups.setdefault(q, []).append(i)
    columns: dict[str, list] = {"query": [], "document_a": [], "document_b": [], "label": []}
    for rows in groups.values():
        if len(rows) < 2:
            continue
        for i in rows:
            for j in rng.sample([r for r in rows if r != i], min(per_document, len(rows) - 1)):
                columns["query"].append(queries[i])
                columns["document_a"].append(texts[i])
                columns["document_b"].append(texts[j])
                columns["label"].append(float(scores[i] - scores[j]))
    return columns


class MaxSimMarginMSELoss(torch.nn.Module):
    """Margin-MSE on MaxSim, computed as rayrank's late-interaction scorer does for a plain encoder:
    L2-normalised last hidden states, every real query token, document tokens minus punctuation."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        tokenizer = model.tokenizer
        skip = {tokenizer.convert_tokens_to_ids(c) for c in string.punctuation} - {tokenizer.unk_token_id}
        self.register_buffer("skip_ids", torch.tensor(sorted(skip), dtype=torch.long), persistent=False)

    def _tokens(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(features)
        return torch.nn.functional.normalize(out["token_embeddings"], dim=-1), features["attention_mask"].bool()

    def maxsim(self, query: dict[str, torch.Tensor], document: dict[str, torch.Tensor]) -> torch.Tensor:
        q, q_mask = self._tokens(query)
        d, d_mask = self._tokens(document)
        d_mask = d_mask & ~torch.isin(document["input_ids"], self.skip_ids.to(d.device))
        sim = torch.einsum("bqh,bdh->bqd", q, d).masked_fill(~d_mask[:, None, :], -1e4)
        return (sim.max(dim=-1).values * q_mask).sum(dim=-1)

    def forward(self, sentence_features: list[dict[str, torch.Tensor]], labels: torch.Tensor) -> torch.Tensor:
        query, doc_a, doc_b = sentence_features[:3]
        margin = self.maxsim(query, doc_a) - self.maxsim(query, doc_b)
        return torch.nn.functional.mse_loss(margin, labels.float())


def train_late_interaction(model: str, columns: dict[str, list], save_to: str | Path, train: TrainConfig
                           ) -> dict[str, Any]:
    """Train a bi-encoder (late-interaction) student on margin triples; save a sentence-transformers folder
    that `rayrank.Reranker(save_to, scorer="late-interaction")` loads."""
    return _train_bi_encoder(model, columns, save_to, train, MaxSimMarginMSELoss)


def _train_bi_encoder(model: str, columns: dict[str, list], save_to: str | Path, train: TrainConfig, make_loss
                      ) -> dict[str, Any]:
    """sentence-transformers' trainer on `columns` with the loss `make_loss(student)`; saves the student."""
    Dataset = require("datasets").Dataset
    require("accelerate")  # the trainer's; without it transformers fails deep inside with its own message
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)

    if train.threads:
        torch.set_num_threads(train.threads)
    torch.manual_seed(train.seed)
    student = SentenceTransformer(str(resolve_model(model).path), local_files_only=True)
    if train.max_length:
        student.max_seq_length = train.max_length
    dataset = Dataset.from_dict(columns)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rayrank-distill-") as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch, num_train_epochs=train.epochs, max_steps=train.max_steps,
            per_device_train_batch_size=train.batch_size, learning_rate=train.learning_rate,
            warmup_steps=train.warmup_ratio, weight_decay=train.weight_decay, seed=train.seed,
            logging_steps=train.logging_steps, save_strategy="no", report_to="none",
            use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
        trainer = SentenceTransformerTrainer(model=student, args=args, train_dataset=dataset,
                                             loss=make_loss(student))
        output = trainer.train()
    student.save_pretrained(str(save_to))
    losses = [round(log["loss"], 6) for log in trainer.state.log_history if "loss" in log]
    return {"examples": len(dataset), "steps": trainer.state.global_step,
            "seconds": round(time.perf_counter() - started, 1), "losses": losses,
            "train_loss": round(float(output.training_loss), 6)}

def dense_pairs(queries: Sequence[str], texts: Sequence[str], target: Sequence[float]) -> dict[str, list]:
    """(query, document, label = sigmoid(target)): the cosine a dense student should reach per pair."""
    labels = 1 / (1 + np.exp(-np.asarray(target, dtype=np.float64)))
    return {"query": list(queries), "document": list(texts), "label": labels.astype(float).tolist()}


def train_dense(model: str, columns: dict[str, list], save_to: str | Path, train: TrainConfig, loss: str
                ) -> dict[str, Any]:
    """Train a single-vector student (the model's own pooling, normalised) on `dense_pairs` (`mse`:
    CosineSimilarityLoss) or `margin_triples` (`margin-mse`: MarginMSELoss, margins × 0.1); save a
    sentence-transformers folder the funnel's dense stage loads."""
    from sentence_transformers import losses

    def make_loss(student):
        if loss == "margin-mse":
            return losses.MarginMSELoss(student)
        return losses.CosineSimilarityLoss(student)

    if loss == "margin-mse":
        columns = {**columns, "label": [0.1 * m for m in columns["label"]]}
    return _train_bi_encoder(model, columns, save_to, train, make_loss)
