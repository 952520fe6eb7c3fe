"""`rayrank check MODEL`: load a model as the job and the server would, and say what rayrank makes of it.

Prints the checkpoint's family, the scorer it runs as, the prompt (decoder rerankers), the lengths it
reads, and for each backend whether it runs on this machine and how far its scores are from torch fp32
on a few pairs. A backend that cannot score the model right says why (the same error a job would give).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rayrank.cli import command
from rayrank.errors import RayrankError
from rayrank.models import resolve_model

# A few pairs of varied length: short and long documents, one query repeated (batching), one long query.
PAIRS = [
    ("what is a ray cluster", "A Ray cluster is a head node and worker nodes that run Python tasks."),
    ("what is a ray cluster", "Fish live in the sea."),
    ("what is a ray cluster", " ".join(["The head node schedules tasks onto workers and keeps the object store."] * 6)),
    ("how fast is the sun", "The sun is a big light in the sky, about 150 million kilometres away."),
    ("python data model " * 8, "Python's data model describes objects, their types and their special methods."),
]
BACKENDS = ("torch", "onnx", "openvino", "auto")


def detect_scorer(model_dir: Path) -> str:
    """cross-encoder for classification heads and decoder rerankers, late-interaction for encoders and ColBERT."""
    config = _json(model_dir / "config.json") or {}
    architectures = config.get("architectures") or []
    modules = _json(model_dir / "modules.json") or []
    if any(a.endswith(("ForSequenceClassification", "ForCausalLM")) for a in architectures):
        return "cross-encoder"
    if any("LogitScore" in m.get("type", "") for m in modules):
        return "cross-encoder"
    return "late-interaction"


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def describe(reranker: Any, instruction: str | None) -> list[tuple[str, str]]:
    """What the loaded scorer reads: family, lengths, and a decoder's prompt with its slots shown."""
    scorer, config = reranker.scorer, _json(reranker.resolved.path / "config.json") or {}
    rows = [("family", f"{config.get('model_type', '?')} ({', '.join(config.get('architectures') or ['no head'])})"),
            ("scorer", f"{scorer.kind} ({type(scorer).__name__})")]
    if hasattr(scorer, "max_length"):
        rows.append(("max length", f"{scorer.max_length} tokens"))
    if hasattr(scorer, "query_max_length"):
        rows += [("query length", f"{scorer.query_max_length} tokens"),
                 ("document length", f"{scorer.document_max_length} tokens"),
                 ("embedding dim", str(scorer.dim))]
    if hasattr(scorer, "conventions"):
        c = scorer.conventions
        rows.append(("conventions", f"markers {c.query_prefix!r}/{c.document_prefix!r}, query length "
                                    f"{c.query_length}, {len(c.skiplist_words)} skiplist words"))
    if hasattr(scorer, "prompt"):
        true_id, false_id = scorer.answer
        if true_id is not None:
            vocab = {i: t for t, i in scorer.tokenizer.vocab.items()}
            answer = f"logit({vocab.get(true_id, true_id)!r})" + (
                f" - logit({vocab.get(false_id, false_id)!r})" if false_id is not None else "")
            rows.append(("score", f"{answer} at the last token"))
        rows.append(("prompt", repr(scorer.prompt.preview(instruction))))
    return rows


def _scores(reranker: Any, instruction: str | None) -> np.ndarray:
    queries, documents = zip(*PAIRS)
    return reranker.score_pairs(list(queries), list(documents), instruction).scores


def _backends(value: str) -> list[str]:
    names = [b.strip() for b in value.split(",") if b.strip()]
    if unknown := [b for b in names if b not in BACKENDS]:
        raise argparse.ArgumentTypeError(f"unknown backend(s) {unknown}; choose from {list(BACKENDS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayrank check", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a Hugging Face id or a local directory")
    parser.add_argument("--scorer", choices=["auto", "cross-encoder", "late-interaction"], default="auto",
                        help="how to score (default: %(default)s, from the checkpoint: classification heads and "
                             "decoder rerankers are cross-encoders, encoders late interaction)")
    parser.add_argument("--backends", default=",".join(BACKENDS), type=_backends,
                        help="comma-separated backends to compare with torch fp32 (default: %(default)s)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens a pair or document is cut to "
                        "(default: the model's)")
    parser.add_argument("--instruction", default=None, help="decoder rerankers: the task instruction "
                        "(default: the family's)")
    parser.add_argument("--prompt-template", default=None, help="decoder rerankers: a built-in prompt, for a "
                        "checkpoint without a chat template (default: from the checkpoint)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run code the checkpoint ships (config.json auto_map); off by default")
    parser.add_argument("--cache-dir", default=None, help="where ONNX/OpenVINO exports are cached "
                        "(default: $RAYRANK_CACHE or ~/.cache/rayrank)")
    return parser


@command("check")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    import rayrank

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per backend would bury the report

    resolved = resolve_model(args.model)
    scorer = args.scorer if args.scorer != "auto" else detect_scorer(resolved.path)
    settings = {k: v for k, v in {"max_length": args.max_length, "instruction": args.instruction,
                                  "prompt_template": args.prompt_template, "cache_dir": args.cache_dir,
                                  "trust_remote_code": args.trust_remote_code or None}.items() if v is not None}
    reference = rayrank.Reranker(args.model, scorer=scorer, backend="torch", dtype="float32", **settings)
    print(f"rayrank check: {args.model}")
    print(f"  {'source':<16} {resolved.source}: {resolved.path}")
    for key, value in describe(reference, args.instruction):
        print(f"  {key:<16} {value}")
    expected = _scores(reference, None)
    print(f"  {'torch fp32':<16} scores {np.array2string(expected, precision=4, max_line_width=200)}")
    failed = 0
    for backend in args.backends:
        try:
            other = rayrank.Reranker(args.model, scorer=scorer, backend=backend, dtype="float32", **settings)
            delta = float(np.max(np.abs(_scores(other, None) - expected)))
        except RayrankError as exc:
            print(f"  {backend:<16} does not run here: {exc}")
            continue
        chosen = f" (chose {other.config.backend})" if backend == "auto" else ""
        verdict = "ok" if delta <= 1e-4 else "DIFFERS"
        failed += verdict != "ok"
        print(f"  {backend:<16} max |Δ| vs torch fp32 {delta:.2e}  {verdict}{chosen}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
