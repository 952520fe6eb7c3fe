"""What both scorers share: the backend factory, the batch loop, and the pair-scores result."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rayrank.backends import Backend
from rayrank.backends.auto import synthetic_batches
from rayrank.backends.onnx_backend import Fusion, OnnxBackend, build_onnx, weights_fingerprint
from rayrank.backends.openvino_backend import OpenVinoBackend
from rayrank.backends.torch_backend import TorchBackend
from rayrank.batching import plan_batches
from rayrank.config import EngineConfig
from rayrank.tokenize import Chunking, Encoded

logger = logging.getLogger(__name__)

# Model families whose ONNX graphs onnxruntime's transformer optimizer knows how to fuse.
_FUSABLE = {"bert": "bert", "distilbert": "bert", "roberta": "bert", "xlm-roberta": "bert",
            "electra": "bert", "mpnet": "bert", "deberta-v2": None}


@dataclass
class PairScores:
    """One float32 score per (query, document) pair, in input order, and how many pairs were truncated."""

    scores: np.ndarray
    truncated: int = 0


def sigmoid(scores: np.ndarray) -> np.ndarray:
    """Logits → probabilities (what one-label sentence-transformers cross-encoders return by default)."""
    return (1.0 / (1.0 + np.exp(-scores.astype(np.float64)))).astype(np.float32)


def attention_for(model, backend: str) -> str:
    """The `attn_implementation` to load `model` (a transformers model class or its config) with for `backend`.

    Exports (onnx, openvino) trace eager attention, the pattern onnxruntime fuses. Torch runs SDPA, PyTorch's
    fused kernels on CPU and CUDA, where the family has it, and eager where it does not: DeBERTa-v2/v3 raises
    on "sdpa". A config is looked up as its base model class (families share one attention module); one
    transformers does not map (remote code) gets eager, which every model has.
    """
    if backend in ("onnx", "openvino"):
        choice = "eager"
    else:
        from transformers.models.auto.modeling_auto import MODEL_MAPPING

        cls = model if isinstance(model, type) else MODEL_MAPPING.get(type(model), None)
        choice = "sdpa" if getattr(cls, "_supports_sdpa", False) else "eager"
    logger.info("attention: %s for %s on %s", choice, getattr(model, "__name__", type(model).__name__), backend)
    return choice


def position_limit(hf_config) -> int:
    """The most tokens the model's position embeddings hold: RoBERTa-style ids start after the padding id."""
    positions = getattr(hf_config, "max_position_embeddings", 512)
    if hf_config.model_type in ("roberta", "xlm-roberta", "camembert"):
        positions -= 2
    return positions


def make_backend(config: EngineConfig, module: torch.nn.Module, model_dir: Path, head: str, hf_config) -> Backend:
    """Wrap `module` in the configured backend; for ONNX and OpenVINO, export it (once) under a content key.

    `backend="auto"` must be resolved first (`rayrank.backends.auto`, done by `Reranker`).
    """
    if config.backend == "auto":
        raise ValueError("backend='auto' is resolved by rayrank.Reranker before a backend is built.")
    if config.backend == "torch":
        if config.quantize != "none":
            raise ValueError("quantize='int8' needs backend='onnx' or 'openvino'; the torch backend runs "
                             "fp32/fp16/bf16.")
        return TorchBackend(module, device=config.device, dtype=config.dtype, threads=config.threads)
    key = f"{weights_fingerprint(model_dir)}-{head}"
    family = _FUSABLE.get(hf_config.model_type)
    fusion = family and Fusion(family, hf_config.num_attention_heads, hf_config.hidden_size)
    cache_dir = Path(config.cache_dir) if config.cache_dir else None
    if config.backend == "openvino":
        # OpenVINO quantizes the fp32 graph itself (static int8), calibrated on synthetic pairs.
        path = build_onnx(module, key=key, fusion=fusion, quantize="none", cache_dir=cache_dir)
        calibration = None if config.quantize == "none" else lambda: synthetic_batches(
            hf_config.vocab_size, min(config.max_length or 512, position_limit(hf_config)),
            getattr(hf_config, "pad_token_id", None) or 0, config.max_tokens_per_batch, 32, 0,
            pairs=CALIBRATION_PAIRS)
        return OpenVinoBackend(path, dtype=config.dtype, threads=config.threads, calibration=calibration)
    path = build_onnx(module, key=key, fusion=fusion, quantize=config.quantize, cache_dir=cache_dir)
    return OnnxBackend(path, device=config.device, threads=config.threads)


# Synthetic pairs (batches of 32) that calibrate OpenVINO's static int8 activation scales.
CALIBRATION_PAIRS = 256

# What one more batch costs, in tokens, when the config leaves it unset (see EngineConfig).
_BATCH_OVERHEAD_TOKENS = {"cpu": 32, "cuda": 2048}


def run_batches(backend: Backend, encoded: Encoded, config: EngineConfig, pad_id: int
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (row indices, backend output) for token-budget batches, longest first."""
    overhead = config.batch_overhead_tokens
    if overhead is None:
        overhead = _BATCH_OVERHEAD_TOKENS["cuda" if backend.device.startswith("cuda") else "cpu"]
    for rows in plan_batches(encoded.lengths, config.max_tokens_per_batch, config.max_batch_size, overhead):
        yield rows, backend.run(encoded.batch(rows, pad_id))


def chunking_of(config: EngineConfig) -> Chunking | None:
    """How long documents are cut (`long_documents: chunk`), or None when they are truncated."""
    if config.long_documents == "truncate":
        return None
    return Chunking(config.chunk_tokens, config.chunk_overlap_tokens, config.max_chunks_per_doc)


def report_truncation(truncated: int, total: int, what: str, max_length: int) -> None:
    if truncated:
        logger.warning("%d of %d %s were longer than %d tokens and were truncated", truncated, total, what, max_length)
