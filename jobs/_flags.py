"""Flags several jobs share, each defined once: the same name, help and default wherever it appears.

Defaults come from the config models (`EngineConfig`, `ClusterConfig`): a flag left out keeps the `--config`
file's key, or the model's default.
"""

from __future__ import annotations

import argparse
from typing import Any

from rayrank.config import ClusterConfig, EngineConfig

ENGINE_FLAGS = ("model", "scorer", "backend", "quantize", "max_tokens_per_batch", "max_length")
CLUSTER_FLAGS = ("address", "actors", "gpus_per_actor")


def _default(model: type, key: str) -> Any:
    return model.model_fields[key].default


def add_engine_flags(parser: argparse.ArgumentParser, *, scorer: bool = True,
                     model_help: str = "a Hugging Face id or a local directory") -> None:
    """--model, --scorer (optional), --backend, --quantize, --max-tokens-per-batch, --max-length."""
    parser.add_argument("--model", help=model_help)
    if scorer:
        parser.add_argument("--scorer", choices=["cross-encoder", "late-interaction"],
                            help="cross-encoder (decoder rerankers included) or late-interaction (default "
                                 f"{_default(EngineConfig, 'scorer')})")
    parser.add_argument("--backend", choices=["auto", "torch", "onnx", "openvino"],
                        help="auto runs the fastest near-exact setting this machine measured for the model, once, "
                             f"cached (default {_default(EngineConfig, 'backend')})")
    parser.add_argument("--quantize", choices=["none", "int8"],
                        help=f"int8 weights, on onnx or openvino (default {_default(EngineConfig, 'quantize')})")
    parser.add_argument("--max-tokens-per-batch", type=int,
                        help="tokens a batch holds, padding counted (default "
                             f"{_default(EngineConfig, 'max_tokens_per_batch')}; 4096 for decoder rerankers)")
    parser.add_argument("--max-length", type=int,
                        help="tokens per input; wins over a checkpoint's saved limit (default: the model's)")


def add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    """--actors, --gpus-per-actor, --address."""
    low, high = _default(ClusterConfig, "actors")
    parser.add_argument("--actors", help=f"MIN,MAX actors of the autoscaling pool, e.g. 1,4 (default {low},{high})")
    parser.add_argument("--gpus-per-actor", type=float,
                        help=f"GPUs each actor reserves (default {_default(ClusterConfig, 'gpus_per_actor')})")
    parser.add_argument("--address", help="Ray address: 'auto' joins a running cluster (default: start a local Ray)")


def flag_values(args: argparse.Namespace, keys: tuple[str, ...]) -> dict[str, Any]:
    """The given flags' values by config key (None for a flag the parser lacks or the user left out)."""
    return {key: getattr(args, key, None) for key in keys}
