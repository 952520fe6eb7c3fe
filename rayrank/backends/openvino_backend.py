"""OpenVINO backend: the ONNX file the ONNX backend exports, compiled for the CPU at fp32 or bf16.

OpenVINO reads the fused ONNX graph as it is (one export, one cache), and on a CPU with AMX or
AVX-512-BF16 its bf16 kernels are what made sentence-transformers' `backend="openvino"` the fastest
CPU peer. It picks bf16 silently on such CPUs; here the precision is always explicit, so
`dtype="float32"` means fp32 everywhere.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

# EngineConfig dtype -> OpenVINO inference precision; "auto" is fp32, the near-exact choice.
_PRECISIONS = {"auto": "f32", "float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AVX-512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


class OpenVinoBackend:
    """Runs an ONNX file with OpenVINO's CPU plugin at the given precision."""

    name = "openvino"
    device = "cpu"

    def __init__(self, path: Path, *, dtype: str = "auto", threads: int | None = None) -> None:
        import openvino as ov

        if dtype not in _PRECISIONS:
            raise ValueError(f"dtype must be one of {sorted(_PRECISIONS)} for backend='openvino', got {dtype!r}.")
        self.dtype = "float32" if dtype == "auto" else dtype
        properties = {"INFERENCE_PRECISION_HINT": _PRECISIONS[dtype], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            properties["INFERENCE_NUM_THREADS"] = threads
        self.path = Path(path)
        self.compiled = ov.Core().compile_model(str(path), "CPU", properties)
        self._request = self.compiled.create_infer_request()
        self._inputs = [port.get_any_name() for port in self.compiled.inputs]

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        result = self._request.infer({name: batch[name] for name in self._inputs})
        return np.array(result[self.compiled.output(0)], dtype=np.float32)
