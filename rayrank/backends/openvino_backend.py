"""OpenVINO backend: the ONNX file the ONNX backend exports, compiled for the CPU at fp32 or bf16,
or statically quantized to int8 with NNCF.

OpenVINO reads the fused ONNX graph as it is (one export, one cache), and on a CPU with AMX or
AVX-512-BF16 its bf16 kernels are what made sentence-transformers' `backend="openvino"` the fastest
CPU peer. It picks bf16 silently on such CPUs; here the precision is always explicit, so
`dtype="float32"` means fp32 everywhere.

Static int8 (`quantize="int8"`) fixes activation scales from calibration batches, so int8 kernels
run without per-batch quantization (what made sentence-transformers' static OpenVINO int8 its
fastest CPU setting). The calibration batches are the engine's own synthetic pairs of the model's
shape (no user text exists at load time); quality is checked on real data in `bench/peers.py`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rayrank.backends.onnx_backend import publish
from rayrank.extras import require

# EngineConfig dtype -> OpenVINO inference precision; "auto" is fp32, the near-exact choice.
_PRECISIONS = {"auto": "f32", "float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AVX-512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def quantize_static(path: Path, calibration: Callable[[], list[dict[str, np.ndarray]]]) -> Path:
    """NNCF static int8 of the ONNX graph at `path` (external data and all), cached as OpenVINO IR in an
    `ov-int8` folder beside the graph's, published whole like every export (`publish`)."""

    def write(target: Path) -> None:
        nncf, ov = require("nncf"), require("openvino")

        model = ov.Core().read_model(str(path))
        names = [port.get_any_name() for port in model.inputs]
        batches = calibration()
        dataset = nncf.Dataset(batches, lambda batch: {name: batch[name] for name in names})
        quantized = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches))
        ov.save_model(quantized, str(target))

    return publish(path.parent.with_name("ov-int8") / "model.xml", write)


class OpenVinoBackend:
    """Runs an ONNX file with OpenVINO's CPU plugin at the given precision; with `calibration`, its
    static int8 version (see `quantize_static`).

    One infer request serves every caller, one at a time: a request is not reentrant ("Infer Request
    is busy" when two threads share it), and with the LATENCY hint one call already uses every core.
    """

    name = "openvino"
    device = "cpu"

    def __init__(self, path: Path, *, dtype: str = "auto", threads: int | None = None,
                 calibration: Callable[[], list[dict[str, np.ndarray]]] | None = None) -> None:
        ov = require("openvino")

        if dtype not in _PRECISIONS:
            raise ValueError(f"dtype must be one of {sorted(_PRECISIONS)} for backend='openvino', got {dtype!r}.")
        self.dtype = "float32" if dtype == "auto" else dtype
        properties = {"INFERENCE_PRECISION_HINT": _PRECISIONS[dtype], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            properties["INFERENCE_NUM_THREADS"] = threads
        self.path = Path(path) if calibration is None else quantize_static(Path(path), calibration)
        self.compiled = ov.Core().compile_model(str(self.path), "CPU", properties)
        self._request = self.compiled.create_infer_request()
        self._inputs = [port.get_any_name() for port in self.compiled.inputs]
        self._lock = threading.Lock()

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        with self._lock:  # the copy below is taken before the next call overwrites the request's output
            result = self._request.infer({name: batch[name] for name in self._inputs})
            return np.array(result[self.compiled.output(0)], dtype=np.float32)
