"""`backend="auto"`: time the near-exact settings on this machine once, cache the fastest, reuse it.

The winner depends on the CPU more than on the code (ONNX fp32 was 1.09x plain torch on an AVX2
CPU and 2.4x on an AVX-512 one; OpenVINO bf16 wins where AMX exists), so no fixed default is right.
The first load times each available setting (torch, onnx and openvino at fp32, and bf16 where the
CPU runs it natively) on a few hundred synthetic pairs of the model's shape, round-robin, checks each
output against torch fp32, and writes the choice to a JSON file keyed by the model's weights, its
head, the CPU's flags, the thread count and the library versions. Quantized settings are never
candidates: they trade accuracy, which only the user may decide. On CUDA, auto is torch (fp16).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rayrank.backends import Backend
from rayrank.backends.onnx_backend import default_cache_dir
from rayrank.backends.openvino_backend import cpu_has_bf16
from rayrank.batching import plan_batches
from rayrank.extras import installed

logger = logging.getLogger(__name__)

# Pairs timed per setting and their token lengths: DL20 query + passage pairs run 40-200 tokens.
SYNTHETIC_PAIRS = 128
LENGTHS = (32, 160)
ROUNDS = 2
# An output further than this from torch fp32 (relative to the output's largest magnitude) means a
# broken conversion, not rounding: bf16 stays near 1e-3.
MAX_RELATIVE_ERROR = 2e-2

Setting = tuple[str, str]  # (backend, dtype)


def candidates(dtype: str = "auto") -> list[Setting]:
    """The near-exact CPU settings this machine can run: fp32 on every installed backend, bf16 where native.

    A `dtype` other than "auto" keeps the settings of that precision only; torch fp32 comes first
    whenever it is a candidate, because it is the reference the others are checked against.
    """
    found = [("torch", "float32"), ("onnx", "float32")]
    openvino = installed("openvino")
    if openvino:
        found.append(("openvino", "float32"))
    if cpu_has_bf16():
        found += [("torch", "bfloat16")] + ([("openvino", "bfloat16")] if openvino else [])
    return [s for s in found if dtype in ("auto", s[1])]


def cpu_flags() -> str:
    """The CPU's model name and feature flags (what decides which kernels run), or the platform."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in info.splitlines() if ":" in line)}
    return f"{fields.get('model name', '')}|{fields.get('flags', '')}"


def _versions() -> str:
    names = ("torch", "onnxruntime", "openvino")
    out = []
    for name in names:
        try:
            from importlib.metadata import version
            out.append(f"{name}={version(name)}")
        except Exception:  # noqa: BLE001 - absent package: part of the key all the same
            out.append(f"{name}=none")
    return ",".join(out)


def cache_key(weights: str, head: str, threads: int | None, dtype: str = "auto") -> str:
    """What decides the winner: the weights and head, the CPU, the threads, the precision asked, the libraries."""
    raw = "\n".join([weights, head, cpu_flags(), f"threads={threads or os.cpu_count()}", f"dtype={dtype}",
                     _versions()])
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def synthetic_batches(vocab_size: int, max_length: int, pad_id: int, max_tokens: int, max_batch_size: int,
                      overhead: int, pairs: int = SYNTHETIC_PAIRS, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Random token ids at DL20-like lengths, planned into the engine's token-budget batches."""
    rng = np.random.default_rng(seed)
    high = min(LENGTHS[1], max_length)  # a model cut shorter than DL20's pairs is timed at its own length
    lengths = rng.integers(min(LENGTHS[0], high), high + 1, size=pairs)
    batches = []
    for rows in plan_batches(lengths, max_tokens, max_batch_size, overhead):
        width = int(lengths[rows].max())
        ids = rng.integers(1000 if vocab_size > 2000 else 1, vocab_size, size=(len(rows), width))
        mask = (np.arange(width)[None, :] < lengths[rows][:, None]).astype(np.int64)
        batches.append({"input_ids": np.where(mask == 1, ids, pad_id).astype(np.int64), "attention_mask": mask,
                        "token_type_ids": np.zeros_like(mask)})
    return batches


def _run_all(backend: Backend, batches: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    return [backend.run(b) for b in batches]


def measure(load: Callable[[str, str], Backend], settings: list[Setting], batches: list[dict[str, np.ndarray]],
            rounds: int = ROUNDS) -> tuple[dict[Setting, dict[str, Any]], dict[Setting, Backend]]:
    """Time each setting on `batches` round-robin (best round counts); error is relative to the first.

    Settings that fail to load are reported with their error and skipped, never fatal.
    """
    backends: dict[Setting, Backend] = {}
    report: dict[Setting, dict[str, Any]] = {}
    for setting in settings:
        try:
            backends[setting] = load(*setting)
            _run_all(backends[setting], batches[:1])  # warm-up: thread pools, first-shape compilation
        except Exception as exc:  # noqa: BLE001 - a setting this machine cannot run is just not a candidate
            report[setting] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            logger.info("backend auto: %s/%s unavailable: %s", *setting, exc)
    times: dict[Setting, list[float]] = {s: [] for s in backends}
    outputs: dict[Setting, list[np.ndarray]] = {}
    for _ in range(rounds):
        for setting, backend in backends.items():
            gc.collect()
            started = time.perf_counter()
            outputs[setting] = _run_all(backend, batches)
            times[setting].append(time.perf_counter() - started)
    rows = sum(len(b["input_ids"]) for b in batches)
    reference = outputs.get(settings[0])
    for setting in backends:
        error = None
        if reference is not None:
            scale = max(float(max(np.abs(r).max() for r in reference)), 1e-6)
            error = max(float(np.abs(o - r).max()) for o, r in zip(outputs[setting], reference)) / scale
        report[setting] = {"pairs_per_s": round(rows / min(times[setting]), 2), "relative_error": error}
    return report, backends


def choose(report: dict[Setting, dict[str, Any]]) -> Setting:
    """The fastest setting whose output matched the reference; fp32 torch when nothing else ran."""
    usable = [(r["pairs_per_s"], s) for s, r in report.items()
              if "pairs_per_s" in r and (r["relative_error"] is None or r["relative_error"] <= MAX_RELATIVE_ERROR)]
    return max(usable)[1] if usable else ("torch", "float32")


def cache_path(key: str, cache_dir: Path | None = None) -> Path:
    """`CACHE_DIR/auto/KEY.json` beside the ONNX exports (`RAYRANK_CACHE`, default ~/.cache/rayrank)."""
    return (cache_dir or default_cache_dir().parent) / "auto" / f"{key}.json"


def resolve(key: str, load: Callable[[str, str], Backend], batches: Callable[[], list[dict[str, np.ndarray]]],
            cache_dir: Path | None = None, dtype: str = "auto") -> dict[str, Any]:
    """The cached choice for `key`, or measure every candidate, cache the fastest and return it.

    The record (`backend`, `dtype`, `cached`, and the per-setting figures when measured) is what
    manifests store.
    """
    path = cache_path(key, cache_dir)
    if path.is_file():
        record = json.loads(path.read_text())
        logger.info("backend auto: %s/%s (cached in %s)", record["backend"], record["dtype"], path)
        return {**record, "cached": True}
    settings = candidates(dtype)
    if not settings:
        why = " (this CPU has no native bf16: no avx512_bf16 or amx_bf16)" if dtype == "bfloat16" else ""
        raise ValueError(f"backend='auto' has no CPU setting for dtype={dtype!r}{why}; use dtype='auto' or "
                         "'float32', or name the backend (backend='torch' runs any dtype).")
    report, loaded = measure(load, settings, batches())
    loaded.clear()
    winner = choose(report)
    record = {"backend": winner[0], "dtype": winner[1], "key": key, "cpu": cpu_flags().split("|")[0],
              "measured": {f"{b}/{d}": r for (b, d), r in report.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(record, tmp, indent=1)
    os.replace(tmp.name, path)
    figures = ", ".join(f"{s} {r.get('pairs_per_s', 'failed')}" for s, r in record["measured"].items())
    logger.info("backend auto chose %s/%s on this CPU (pairs/s: %s); cached in %s", *winner, figures, path)
    return {**record, "cached": False}
