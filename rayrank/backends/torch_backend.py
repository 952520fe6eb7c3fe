"""Eager PyTorch backend: CPU fp32, CUDA fp16/bf16 (bf16 and fp16 also run, slowly, on CPU: parity tests).

Attention is PyTorch's SDPA where the family has it, eager where not (`rayrank.scoring.base.attention_for`); padding is
kept small by the token-budget planner (rayrank/batching.py), which cuts length-sorted batches where
padding would cost more than another call.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(device: str) -> str:
    """`auto` means CUDA when present; asking for CUDA without a GPU is an error, not a silent CPU run."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} requested but torch sees no CUDA GPU; use device='cpu'.")
    return device


def pick_dtype(dtype: str, device: str) -> str:
    """`auto` is fp16 on CUDA (tensor cores), fp32 on CPU (half precision is slow there)."""
    if dtype == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    return dtype


class TorchBackend:
    """Runs `module(input_ids, attention_mask, token_type_ids)` under `inference_mode`."""

    name = "torch"

    def __init__(self, module: torch.nn.Module, *, device: str = "auto", dtype: str = "auto",
                 threads: int | None = None) -> None:
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        if threads:
            torch.set_num_threads(threads)
        self.module = module.to(device=self.device, dtype=_DTYPES[self.dtype]).eval()

    @torch.inference_mode()
    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        inputs = [self._to_device(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]
        # Upcast before leaving the device: ties in fp16 scores would otherwise break rank order.
        return self.module(*inputs).float().cpu().numpy()

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.startswith("cuda"):
            # From page-locked memory the copy is a DMA that does not wait for the host (non_blocking);
            # from pageable memory CUDA first copies into a pinned buffer, synchronously.
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)
