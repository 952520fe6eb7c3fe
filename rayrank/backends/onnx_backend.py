"""ONNX Runtime backend: export once per model into a cache, fuse, optionally quantize to int8.

The cache key covers the weights' identity, the scorer's head, the opset and the torch version, so
a changed checkpoint is re-exported and an unchanged one is reused by every actor and every run.

Each artifact is a folder (`fp32/model.onnx`, `int8/model.onnx`, ...) published by one rename, so a
graph over protobuf's 2 GB limit travels with its external data file (`model.onnx.data`) and no
reader ever sees one without the other.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

logger = logging.getLogger(__name__)

OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# Models with more fp32 weight bytes than this keep their weights in an external data file: protobuf
# cannot serialize a graph over 2 GB, and fusion and quantization add tensors to the graph they read.
EXTERNAL_DATA_BYTES = 1 << 30
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


def _optimize(src: Path, dst: Path, fusion: Fusion | None, external: bool) -> None:
    """Fuse attention, LayerNorm and GELU with onnxruntime's transformer optimizer when it knows the family;
    with `external`, every weight goes to one data file beside `dst` (`model.onnx.data`)."""
    import onnx
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.onnx_model import OnnxModel

    if fusion is None:
        model = OnnxModel(onnx.load(str(src)))
    else:
        model = optimizer.optimize_model(str(src), model_type=fusion.model_type, num_heads=fusion.num_heads,
                                         hidden_size=fusion.hidden_size, opt_level=1)
    model.save_model_to_file(str(dst), use_external_data_format=external, all_tensors_to_one_file=True)


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


def _quantize(src: Path, dst: Path, reduce_range: bool, external: bool) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel int8 weights keep far more accuracy than per-tensor at the same speed. Fused
    # contrib ops defeat shape inference, hence the default tensor type.
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range,
                     use_external_data_format=external, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def publish(target: Path, write: Callable[[Path], None]) -> Path:
    """Make `target` exist, whole: `write(path)` fills a private folder that one rename turns into `target.parent`.

    A graph and its external data (or an IR's .xml and .bin) share that folder, so a reader that sees
    `target` sees every file beside it. Of two actors racing, the first rename wins; the second finds
    the folder taken (the rename fails on a non-empty folder), drops its own copy and uses the winner's.
    """
    if target.is_file():
        return target
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent.parent, prefix=".staging-") as tmp:
        staged = Path(tmp) / target.parent.name
        staged.mkdir()
        write(staged / target.name)
        try:
            os.rename(staged, target.parent)
        except OSError:
            if not target.is_file():
                raise
    return target


def build_onnx(module: torch.nn.Module, *, key: str, fusion: Fusion | None, quantize: Quantize,
               cache_dir: Path | None = None) -> Path:
    """Export (or reuse) the ONNX graph for `module` and return its path (`<cache>/<key>/<variant>/model.onnx`).

    Every variant is published whole (see `publish`), so concurrent actors never read half an export.
    """
    folder = (cache_dir or default_cache_dir()) / f"{key}-op{OPSET}-t{torch.__version__.split('+')[0]}"
    # 7-bit weights are chosen per CPU (see int8_saturates), so they get their own folder.
    variant = {"none": "fp32", "int8": "int8-7bit" if int8_saturates() else "int8"}[quantize]
    final = folder / variant / "model.onnx"
    if final.is_file():
        logger.info("reusing ONNX model %s", final)
        return final
    # onnxruntime's optimizer and quantizer log every fusion at INFO, some on the root logger.
    quiet = [logging.getLogger(n) for n in ("", "fusion_base", "fusion_utils", "onnx_model", "onnx_model_bert")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(max(q.level, logging.WARNING))
    try:
        _build(module, folder / "fp32" / "model.onnx", final, fusion, quantize)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    logger.info("exported ONNX model %s", final)
    return final


def _build(module: torch.nn.Module, fp32: Path, final: Path, fusion: Fusion | None, quantize: Quantize) -> None:
    external = sum(p.numel() for p in module.parameters()) * 4 > EXTERNAL_DATA_BYTES

    def export_fused(path: Path) -> None:
        # The raw export sits apart from the published folder: over 2 GB torch writes a file per tensor.
        with tempfile.TemporaryDirectory(dir=path.parent.parent) as tmp:
            raw = Path(tmp) / "raw.onnx"
            _export(module, raw, example_length=16)
            _optimize(raw, path, fusion, external)

    publish(fp32, export_fused)
    if quantize == "int8":
        publish(final, lambda path: _quantize(fp32, path, final.parent.name == "int8-7bit", external))


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
