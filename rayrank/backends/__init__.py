"""Backends run an exported-or-eager model on one padded batch and return float32 numpy arrays.

Both take the same `torch.nn.Module` (built by a scorer: logits head or normalised token
embeddings), so the torch and ONNX paths compute the same function by construction.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np

BackendName = Literal["torch", "onnx"]


class Backend(Protocol):
    """`run(batch) -> float32 array`; `batch` maps input names to int64 arrays of shape (rows, tokens)."""

    name: str
    device: str

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray: ...
