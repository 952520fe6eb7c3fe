"""Optional extras: a feature imports its package through `require`, which names the extra to install.

The core install is the engine, the jobs and Serve; OpenVINO, the funnel's BM25/HNSW and the model lab
are extras (pyproject.toml), so a missing one must say which `pip install` brings it back.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from rayrank.errors import MissingExtraError

# module -> (extra, what needs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "openvino": ("openvino", "backend: openvino"),
    "nncf": ("openvino", "backend: openvino with quantize: int8"),
    "Stemmer": ("funnel", "the funnel's BM25 stage"),
    "faiss": ("funnel", "the funnel's dense (HNSW) stage"),
    "datasets": ("lab", "fine-tuning and distilling"),
    "accelerate": ("lab", "fine-tuning and distilling"),
    "matplotlib": ("lab", "plots"),
}


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    return importlib.util.find_spec(module) is not None


def require(module: str) -> ModuleType:
    """Import `module` or raise MissingExtraError naming the extra that installs it.

    Example:
        >>> require("Stemmer").__name__
        'Stemmer'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra, feature = EXTRAS[module]
        raise MissingExtraError(f"{feature} needs the {module!r} package, which is not installed: "
                                f'pip install "rayrank[{extra}]"') from exc


def need(*modules: str) -> None:
    """Raise MissingExtraError for the first of `modules` that is not installed, importing none: a job checks,
    before Ray starts, what each of its actors would otherwise fail to import."""
    for module in modules:
        if not installed(module):
            require(module)


def engine_needs(engine) -> tuple[str, ...]:
    """The optional packages an EngineConfig's backend imports."""
    if engine.backend != "openvino":
        return ()
    return ("openvino", "nncf") if engine.quantize != "none" else ("openvino",)
