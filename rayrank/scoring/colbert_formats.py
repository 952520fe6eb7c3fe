"""ColBERT checkpoint layouts: the conventions and the projection a late-interaction checkpoint defines.

Three layouts score as their reference implementations do (PyLate loads all three the same way):

- PyLate / sentence-transformers (`lightonai/GTE-ModernColBERT-v1`): `modules.json` lists the encoder and
  `Dense` projections; conventions in `config_sentence_transformers.json`.
- Stanford ColBERT (`colbert-ir/colbertv2.0`, `answerdotai/answerai-colbert-small-v1`): `config.json` names
  `HF_ColBERT`; the encoder's weights under its base-model prefix (`bert.`) and a bias-free `linear.weight`
  in the same file; conventions in `artifact.metadata` (a ColBERTConfig).
- A plain encoder (e.g. all-MiniLM-L6-v2): its token states, no markers, no projection.

Any other late-interaction layout is refused: its projection would be skipped and scores silently wrong.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rayrank.errors import UnsupportedModelError
from rayrank.tokenize import Encoded

SUPPORTED = ("rayrank scores late interaction with PyLate checkpoints (modules.json + Dense, "
             "config_sentence_transformers.json), Stanford ColBERT checkpoints (config.json architectures "
             "['HF_ColBERT'], linear.weight in the main weights, artifact.metadata) and plain encoders; "
             "convert others with `pylate.models.ColBERT(path).save(out_dir)`")
_IDENTITY = {"torch.nn.modules.linear.Identity", "torch.nn.Identity"}


@dataclass(frozen=True)
class ColbertConventions:
    """How queries and documents are marked, cut, padded and filtered; recorded in index manifests.

    A marker (`[Q] `, `[unused0]`) is one vocabulary token inserted right after `[CLS]`, never text.
    """

    layout: str = "plain"  # "pylate", "stanford" or "plain": where these were read from
    query_prefix: str = ""
    document_prefix: str = ""
    query_length: int | None = None  # queries are cut to this many tokens, marker included
    document_length: int | None = None
    do_query_expansion: bool = False  # pad queries with [MASK] to query_length (query augmentation)
    attend_to_expansion_tokens: bool = False
    skiplist_words: tuple[str, ...] = field(default_factory=lambda: tuple(string.punctuation))
    lowercase: bool = False  # sentence-transformers' do_lower_case


@dataclass
class ColbertCheckpoint:
    conventions: ColbertConventions
    projection: torch.nn.Sequential | None  # hidden states → token embeddings, before L2 normalisation


def read_checkpoint(model_dir: Path, encoder: torch.nn.Module) -> ColbertCheckpoint:
    """The checkpoint's layout, in PyLate's order: Dense modules first, then `HF_ColBERT`, else plain."""
    modules = _json(model_dir / "modules.json") or []
    dense = [m for m in sorted(modules, key=lambda m: m.get("idx", 0)) if m.get("type", "").endswith("Dense")]
    architectures = getattr(encoder.config, "architectures", None) or []
    if dense:
        return ColbertCheckpoint(_pylate_conventions(model_dir),
                                 torch.nn.Sequential(*(_dense(model_dir / m["path"]) for m in dense)))
    if "HF_ColBERT" in architectures:
        return _stanford(model_dir, encoder)
    unknown = [a for a in architectures if "colbert" in a.lower()]
    if unknown or (model_dir / "colbert_linear.pt").is_file() or "linear.weight" in _weight_names(model_dir):
        found = unknown[0] if unknown else "a ColBERT projection outside modules.json"
        raise UnsupportedModelError(f"{model_dir}: unknown late-interaction layout ({found}); {SUPPORTED}.")
    return ColbertCheckpoint(_pylate_conventions(model_dir), None)


def _json(path: Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _pylate_conventions(model_dir: Path) -> ColbertConventions:
    """PyLate's keys with PyLate's defaults; a folder without them (a plain encoder) gets none."""
    data = _json(model_dir / "config_sentence_transformers.json") or {}
    lowercase = bool((_json(model_dir / "sentence_bert_config.json") or {}).get("do_lower_case", False))
    if "query_prefix" not in data and "query_length" not in data and data.get("model_type") != "ColBERT":
        return ColbertConventions(lowercase=lowercase)
    expand = data.get("do_query_expansion", True)
    return ColbertConventions(
        layout="pylate",
        query_prefix=data.get("query_prefix", "[Q] ") or "",
        document_prefix=data.get("document_prefix", "[D] ") or "",
        query_length=data.get("query_length") or 32,
        document_length=data.get("document_length") or 180,
        do_query_expansion=expand,
        attend_to_expansion_tokens=expand and bool(data.get("attend_to_expansion_tokens", False)),
        skiplist_words=tuple(data.get("skiplist_words") or string.punctuation),
        lowercase=lowercase,
    )


def _dense(folder: Path) -> torch.nn.Linear:
    """One sentence-transformers / PyLate Dense module as a Linear; activations other than identity refused."""
    cfg = json.loads((folder / "config.json").read_text())
    activation = cfg.get("activation_function", "torch.nn.modules.linear.Identity")
    if activation not in _IDENTITY or cfg.get("use_residual"):
        raise UnsupportedModelError(
            f"{folder}: Dense with activation {activation} and use_residual={cfg.get('use_residual', False)}; "
            "rayrank applies linear Dense projections only (activation Identity, no residual).")
    linear = torch.nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg.get("bias", True))
    state = _load_weights(folder)
    linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    return linear


def _main_weights(model_dir: Path) -> Path | None:
    """The file PyLate reads a Stanford projection from: model.safetensors, else pytorch_model.bin."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / name).is_file():
            return model_dir / name
    return None


def _weight_names(model_dir: Path) -> list[str]:
    path = _main_weights(model_dir)
    if path is None or path.suffix != ".safetensors":
        return list(_load_weights(model_dir)) if path is not None else []
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = _main_weights(folder)
    if path is None:
        raise UnsupportedModelError(f"{folder} has neither model.safetensors nor pytorch_model.bin; {SUPPORTED}.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _stanford(model_dir: Path, encoder: torch.nn.Module) -> ColbertCheckpoint:
    """`HF_ColBERT`: the encoder under its base-model prefix, `linear` beside it, ColBERTConfig in artifact.metadata."""
    names = _weight_names(model_dir)
    prefix = f"{encoder.base_model_prefix}."
    if "linear.weight" not in names or not any(n.startswith(prefix) for n in names):
        missing = "linear.weight" if "linear.weight" not in names else f"encoder weights under '{prefix}'"
        raise UnsupportedModelError(f"{model_dir}: an HF_ColBERT checkpoint without {missing} in its main "
                                    f"weights would score with the wrong embeddings; {SUPPORTED}.")
    meta = _json(model_dir / "artifact.metadata")
    missing_keys = [k for k in ("query_maxlen", "doc_maxlen") if not (meta or {}).get(k)]
    if missing_keys:
        raise UnsupportedModelError(f"{model_dir}: a Stanford ColBERT checkpoint needs artifact.metadata with "
                                    f"{' and '.join(missing_keys)} (its query and document lengths); add them "
                                    "as ColBERT wrote them when training.")
    if meta.get("similarity", "cosine") != "cosine":
        raise UnsupportedModelError(f"{model_dir}: ColBERT similarity {meta['similarity']!r}; rayrank scores "
                                    "cosine MaxSim only.")
    weight = _load_weights(model_dir)["linear.weight"]
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.load_state_dict({"weight": weight})
    conventions = ColbertConventions(
        layout="stanford",
        query_prefix=meta.get("query_token_id") or "[unused0]",
        document_prefix=meta.get("doc_token_id") or "[unused1]",
        query_length=int(meta["query_maxlen"]),
        document_length=int(meta["doc_maxlen"]),
        do_query_expansion=True,
        attend_to_expansion_tokens=bool(meta.get("attend_to_mask_tokens", False)),
        skiplist_words=tuple(string.punctuation) if meta.get("mask_punctuation", True) else (),
    )
    return ColbertCheckpoint(conventions, torch.nn.Sequential(linear))


def marker_id(vocab: dict[str, int], marker: str, model_dir: Path) -> int | None:
    """The vocabulary id of a marker (PyLate's `convert_tokens_to_ids`); None for no marker."""
    if not marker:
        return None
    if marker not in vocab:
        raise UnsupportedModelError(f"{model_dir}: marker {marker!r} is not a token of the checkpoint's "
                                    "tokenizer, so it has no trained embedding; save the tokenizer with it "
                                    "(PyLate adds it with `tokenizer.add_tokens`).")
    return vocab[marker]


def with_marker(encoded: Encoded, marker: int | None) -> Encoded:
    """Insert the marker right after each row's first token ([CLS]), attended, segment 0."""
    if marker is None:
        return encoded
    return Encoded(input_ids=[ids[:1] + [marker] + ids[1:] for ids in encoded.input_ids],
                   token_type_ids=[t[:1] + [0] + t[1:] for t in encoded.token_type_ids],
                   attention_mask=[m[:1] + [1] + m[1:] for m in encoded.attention_mask],
                   truncated=encoded.truncated)
