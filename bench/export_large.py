"""A model over protobuf's 2 GB limit exports, fuses, (optionally) quantizes and scores on onnx and openvino.

The model is `BAAI/bge-reranker-large`'s architecture (XLM-RoBERTa, 24 layers, hidden 1024, 250,002-token
vocabulary: 560M parameters, 2.24 GB in fp32) with random weights, built here without the hub; its
tokenizer is a tiny stand-in, since only the graph's size matters. Each setting is loaded the way a user
loads it (`Reranker(path, backend=...)`, export included on first use) and compared with torch fp32.

    flock /tmp/rayrank-bench.lock python bench/export_large.py [--int8] [--work-dir DIR]

On 2 cores of an Intel Xeon (2026-12-07, --int8, 9 min in all): onnx fp32 export and fusion 40 s, a 0.1 MB
graph beside 2,135 MB of external data, max |diff| 4.8e-07 against torch fp32 (openvino on the same files:
1.4e-06); onnx int8 37 s, 534 MB; openvino NNCF int8 431 s (calibration), 536 MB. Peak resident memory was
17 GB (mapped weight files included), during the export: run it alone.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

PAIRS = [("ray", "the sea"), ("what is a fast search rank score", "cat dog fish " * 6),
         ("python data model", "how to run a big data cluster with ray and python, fast!"),
         ("who was the old cat", "the dog was big and the fish was small " * 4),
         ("sun light", "the old sea " * 40)]


def build(folder: Path) -> Path:
    """bge-reranker-large's config with seeded random weights, and a tiny XLM-R-style tokenizer."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    from tests.tiny_families import xlm_roberta_tokenizer

    if (folder / "config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tok = xlm_roberta_tokenizer(folder, length=512)
    config = XLMRobertaConfig(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                              intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, num_labels=1,
                              pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
                              eos_token_id=tok.sep_token_id)
    torch.manual_seed(0)
    XLMRobertaForSequenceClassification(config).eval().save_pretrained(str(folder))
    return folder


def _megabytes(folder: Path, suffixes: tuple[str, ...]) -> float:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith(suffixes)) / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, help="model and export cache (default: a temporary folder)")
    parser.add_argument("--int8", action="store_true", help="also onnx dynamic int8 and openvino NNCF static int8")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    from rayrank import Reranker

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="rayrank-large-"))
    started = time.perf_counter()
    model = build(work / "bge-reranker-large-random")
    print(f"built {model} in {time.perf_counter() - started:.0f} s")
    settings = [("torch", "none"), ("onnx", "none"), ("openvino", "none")]
    settings += [("onnx", "int8"), ("openvino", "int8")] if args.int8 else []
    rows, reference = [], None
    for backend, quantize in settings:
        gc.collect()
        started = time.perf_counter()
        reranker = Reranker(str(model), backend=backend, quantize=quantize, device="cpu", dtype="float32",
                            threads=args.threads, cache_dir=str(work / "cache"), max_tokens_per_batch=2048)
        load = time.perf_counter() - started
        started = time.perf_counter()
        scores = reranker.score_pairs(*zip(*PAIRS)).scores
        run = time.perf_counter() - started
        path = getattr(reranker.scorer.backend, "path", None)
        del reranker
        if reference is None:
            reference = scores
        graph = _megabytes(path.parent, (".onnx", ".xml")) if path else None
        data = _megabytes(path.parent, (".data", ".bin")) if path else None
        rows.append((f"{backend} {'fp32' if quantize == 'none' else quantize}", load, run, graph, data,
                     float(np.abs(scores - reference).max()), path.parent.name if path else "-"))
    spread = float(reference.max() - reference.min())
    print(f"\n{len(PAIRS)} pairs; torch fp32 logits span {spread:.4f}; load = Reranker(...) incl. export on first use")
    print("| setting | load s | score s | graph MB | data MB | max abs diff vs torch fp32 | folder |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, load, run, graph, data, diff, folder in rows:
        sizes = f"{graph:.1f} | {data:.0f}" if graph is not None else "- | -"
        print(f"| {name} | {load:.0f} | {run:.2f} | {sizes} | {diff:.2e} | {folder} |")
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
