"""ONNX Runtime backend: export once per model into a cache, fuse, optionally quantize to int8.

The cache key covers the weights' identity, the scorer's head, the opset and the torch version, so
a changed checkpoint is re-exported and an unchanged one is reused by every actor and every run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

logger = logging.getLogger(__name__)

OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
Quantize = Literal["none", "int8"]


@dataclass(frozen=True)
class Fusion:
    """What onnxruntime's transformer optimizer needs to fuse a family's attention blocks."""

    model_type: str
    num_heads: int
    hidden_size: int


def default_cache_dir() -> Path:
    return Path(os.environ.get("RAYRANK_CACHE", Path.home() / ".cache" / "rayrank")) / "onnx"


def weights_fingerprint(model_dir: Path) -> str:
    """Cheap identity of a checkpoint: names, sizes and mtimes of its weight and config files."""
    parts = []
    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and path.suffix in {".safetensors", ".bin", ".json", ".pt"}:
            stat = path.stat()
            parts.append(f"{path.relative_to(model_dir)}:{stat.st_size}:{int(stat.st_mtime)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _export(module: torch.nn.Module, path: Path, example_length: int) -> None:
    """Export with dynamic rows and tokens; the example shape is arbitrary (tests use another)."""
    example = (torch.ones((2, example_length), dtype=torch.long),) * 2 + (
        torch.zeros((2, example_length), dtype=torch.long),)
    dynamic = {name: {0: "rows", 1: "tokens"} for name in INPUT_NAMES}
    with torch.inference_mode(False), torch.no_grad():
        rank = module.float().eval()(*example).dim()
        dynamic["output"] = {0: "rows", 1: "tokens"} if rank == 3 else {0: "rows"}
        torch.onnx.export(module.float().eval(), example, str(path), input_names=list(INPUT_NAMES),
                          output_names=["output"], dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)


def _optimize(src: Path, dst: Path, fusion: Fusion | None) -> None:
    """Fuse attention, LayerNorm and GELU with onnxruntime's transformer optimizer when it knows the family."""
    from onnxruntime.transformers import optimizer

    if fusion is None:
        dst.write_bytes(src.read_bytes())
        return
    optimized = optimizer.optimize_model(str(src), model_type=fusion.model_type, num_heads=fusion.num_heads,
                                         hidden_size=fusion.hidden_size, opt_level=1)
    optimized.save_model_to_file(str(dst))


def int8_saturates() -> bool:
    """Whether this CPU multiplies uint8 x int8 through int16 sums that saturate (x86 without VNNI).

    There 8-bit weights lose real accuracy (a tiny cross-encoder's int8 logits moved by twice their
    spread); onnxruntime's advice is 7-bit weights (`reduce_range`), which cannot saturate.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # an x86 CPU we cannot inspect: take the choice that is safe everywhere
    return re.search(r"\b(avx512_vnni|avx_vnni)\b", flags) is None


def _quantize(src: Path, dst: Path, reduce_range: bool) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel int8 weights keep far more accuracy than per-tensor at the same speed. Fused
    # contrib ops defeat shape inference, hence the default tensor type.
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def build_onnx(module: torch.nn.Module, *, key: str, fusion: Fusion | None, quantize: Quantize,
               cache_dir: Path | None = None) -> Path:
    """Export (or reuse) the ONNX file for `module` and return its path.

    Files are written to a temporary name and renamed, so concurrent actors never read half a file.
    """
    folder = (cache_dir or default_cache_dir()) / f"{key}-op{OPSET}-t{torch.__version__.split('+')[0]}"
    folder.mkdir(parents=True, exist_ok=True)
    # 7-bit weights are chosen per CPU (see int8_saturates), so they get their own file name.
    final = folder / {"none": "model.onnx", "int8": "model.int8-7bit.onnx" if int8_saturates() else "model.int8.onnx"}[quantize]
    if final.is_file():
        logger.info("reusing ONNX model %s", final)
        return final
    # onnxruntime's optimizer and quantizer log every fusion at INFO, some on the root logger.
    quiet = [logging.getLogger(n) for n in ("", "fusion_base", "fusion_utils", "onnx_model", "onnx_model_bert")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(max(q.level, logging.WARNING))
    try:
        _build(module, folder, final, fusion, quantize)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    logger.info("exported ONNX model %s", final)
    return final


def _build(module: torch.nn.Module, folder: Path, final: Path, fusion: Fusion | None, quantize: Quantize) -> None:
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        raw, fused = Path(tmp) / "raw.onnx", Path(tmp) / "fused.onnx"
        _export(module, raw, example_length=16)
        _optimize(raw, fused, fusion)
        fp32 = folder / "model.onnx"
        if not fp32.is_file():
            os.replace(fused, fp32)
        if quantize == "int8":
            tmp_q = Path(tmp) / "int8.onnx"
            _quantize(fp32, tmp_q, reduce_range=final.name == "model.int8-7bit.onnx")
            os.replace(tmp_q, final)


class OnnxBackend:
    """Runs an ONNX file with onnxruntime; CUDA provider when present and asked for."""

    name = "onnx"

    def __init__(self, path: Path, *, device: str = "auto", threads: int | None = None) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        want_cuda = device.startswith("cuda") or (device == "auto" and "CUDAExecutionProvider" in available)
        if want_cuda and "CUDAExecutionProvider" not in available:
            raise RuntimeError("device='cuda' requested but onnxruntime has no CUDAExecutionProvider; "
                               "install onnxruntime-gpu instead of onnxruntime.")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if want_cuda else ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.device = "cuda" if want_cuda else "cpu"
        self._inputs = [i.name for i in self.session.get_inputs()]

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        (out,) = self.session.run(["output"], {name: batch[name] for name in self._inputs})
        return np.asarray(out, dtype=np.float32)
