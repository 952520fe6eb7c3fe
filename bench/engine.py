"""Engine speed and quality against plain sentence-transformers, on TREC-DL20 pairs.

Cross-encoder: on the first N pairs of ../shared/data/trec-dl20/candidates.parquet and one
MiniLM-L6-shaped checkpoint (the bundled all-MiniLM-L6-v2 backbone with a fresh seeded 1-logit head),
times plain `CrossEncoder.predict(batch_size=32)` and the engine on each backend, interleaved, and
prints pairs/s, the ratio to plain predict, max |Δscore| and Kendall τ against plain predict.

Late interaction (real all-MiniLM-L6-v2 weights): docs/s of `encode_documents` against a
per-document `SentenceTransformer.encode(doc, output_value="token_embeddings")` loop, and nDCG@10 of
MaxSim reranking of the DL20 BM25 top-100 with each backend, so quantization loss shows as lost quality.

    python bench/engine.py                      # CPU: torch, onnx fp32, onnx int8
    python bench/engine.py --pairs 2000 --repeats 5
    python bench/engine.py --device cuda        # torch fp16/bf16 and ONNX CUDA, 256-token pairs
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _common import DL20, MINILM, interleaved, load_average, load_dl20, minilm_cross_encoder, skip_message, table

# (label, Reranker settings) per device; CUDA runs at 256 tokens, the length GPU serving would cap at.
CPU_VARIANTS = [("engine torch", {"backend": "torch"}),
                ("engine onnx fp32", {"backend": "onnx"}),
                ("engine onnx int8", {"backend": "onnx", "quantize": "int8"})]
CUDA_VARIANTS = [("engine torch fp16", {"backend": "torch", "dtype": "float16"}),
                 ("engine torch bf16", {"backend": "torch", "dtype": "bfloat16"}),
                 ("engine onnx cuda fp32", {"backend": "onnx"})]


def _variants(device: str) -> list[tuple[str, dict]]:
    if device == "cpu":
        return CPU_VARIANTS
    import onnxruntime

    usable = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if not usable:
        print("note: onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu); ONNX CUDA skipped")
    return [v for v in CUDA_VARIANTS if usable or v[1]["backend"] != "onnx"]


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def cross_encoder(args, pairs: tuple[list[str], list[str]], work: Path) -> list[dict]:
    """Plain predict and each engine backend on the same pairs and the same weights."""
    import torch
    from sentence_transformers import CrossEncoder

    import rayrank

    folder = args.model or minilm_cross_encoder(work / "minilm-1logit")
    queries, docs = pairs
    common = {"device": args.device, "threads": args.threads, "cache_dir": str(work / "onnx"),
              **{k: v for k, v in (("max_length", args.max_length), ("max_tokens_per_batch", args.max_tokens_per_batch),
                                   ("max_batch_size", args.max_batch_size)) if v}}
    # A user on a GPU loads the plain model in half precision too; fp32 would flatter the engine.
    half = {"model_kwargs": {"dtype": torch.float16}} if args.device == "cuda" else {}
    plain = CrossEncoder(str(folder), device=args.device, activation_fn=torch.nn.Identity(),
                         max_length=args.max_length, **half)
    contenders = {"plain CrossEncoder.predict": lambda: plain.predict(
        list(zip(queries, docs)), batch_size=args.plain_batch_size, show_progress_bar=False)}
    for label, settings in _variants(args.device):
        reranker = rayrank.Reranker(str(folder), **common, **settings)
        reranker.score_pairs(queries[:32], docs[:32])  # warm-up: allocator, thread pool, CUDA context
        contenders[label] = lambda r=reranker: r.score_pairs(queries, docs).scores
    timed = interleaved(contenders, args.repeats)
    base_time, base = timed["plain CrossEncoder.predict"]
    base = np.asarray(base, dtype=np.float32)
    rows = []
    for label, (seconds, scores) in timed.items():
        scores = np.asarray(scores, dtype=np.float32)
        rows.append({"cross-encoder": label, "pairs/s": len(queries) / seconds, "× plain": base_time / seconds,
                     "max abs Δscore": float(np.abs(scores - base).max()), "Kendall τ": _kendall(scores, base)})
    return rows


def late_interaction(args, dl20, work: Path) -> tuple[list[dict], list[dict]]:
    """Docs/s of encode_documents vs a per-document loop, and DL20 nDCG@10 of MaxSim reranking per backend."""
    from sentence_transformers import SentenceTransformer

    import rayrank
    from rayrank.evaluate import evaluate
    from rayrank.models import resolve_model

    candidates, qrels = dl20
    texts = list(dict.fromkeys(candidates["text"].to_pylist()))[: args.docs]
    common = {"scorer": "late-interaction", "device": args.device, "threads": args.threads,
              "cache_dir": str(work / "onnx")}
    plain = SentenceTransformer(str(resolve_model(MINILM).path), device=args.device)
    loop = lambda: [plain.encode(t, output_value="token_embeddings") for t in texts]
    rerankers = {label: rayrank.Reranker(MINILM, **common, **settings) for label, settings in _variants(args.device)}
    contenders = {"per-document ST.encode loop": loop}
    for label, reranker in rerankers.items():
        reranker.scorer.encode_documents(texts[:16])
        contenders[label] = lambda r=reranker: r.scorer.encode_documents(texts)
    timed = interleaved(contenders, args.repeats)
    base_time = timed["per-document ST.encode loop"][0]
    speed = [{"late interaction": label, "docs/s": len(texts) / seconds, "× loop": base_time / seconds}
             for label, (seconds, _) in timed.items()]

    qids, queries = candidates["query_id"].to_pylist(), candidates["query"].to_pylist()
    dids, docs = candidates["doc_id"].to_pylist(), candidates["text"].to_pylist()
    quality = []
    for label, reranker in rerankers.items():
        scores = reranker.score_pairs(queries, docs).scores
        run: dict[str, dict[str, float]] = {}
        for qid, did, score in zip(qids, dids, scores):
            run.setdefault(qid, {})[did] = float(score)
        metrics = evaluate(run, qrels)
        quality.append({"late interaction": label, "DL20 nDCG@10": metrics.ndcg_at_10, "queries": metrics.queries})
    return speed, quality


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1000, help="first N DL20 pairs for cross-encoder timing")
    parser.add_argument("--docs", type=int, default=500, help="distinct DL20 passages for docs/s timing")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best time of each counts")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    parser.add_argument("--max-length", type=int, default=None, help="token cap (default: 256 on CUDA, model's on CPU)")
    parser.add_argument("--model", type=Path, default=None,
                        help="cross-encoder checkpoint to time (default: all-MiniLM-L6-v2 backbone + fresh head)")
    parser.add_argument("--max-tokens-per-batch", type=int, default=None, help="engine token budget (default: engine's)")
    parser.add_argument("--max-batch-size", type=int, default=None, help="engine row cap (default: engine's)")
    parser.add_argument("--plain-batch-size", type=int, default=32, help="batch_size of plain CrossEncoder.predict")
    parser.add_argument("--full-length", action="store_true",
                        help="lengthen every document so each pair fills --max-length tokens (worst case)")
    parser.add_argument("--skip-late", action="store_true", help="cross-encoder part only")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the checkpoint and ONNX files here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and args.max_length is None:
        args.max_length = 256
    logging.basicConfig(level=logging.WARNING)
    full = load_dl20()
    if full is None:
        print(skip_message(DL20))
        return 0
    candidates = full[0]
    # More pairs than DL20 holds (GPU runs want seconds of work) cycle through it.
    cycled = lambda column: [column[i % len(column)] for i in range(args.pairs)]
    queries, docs = cycled(candidates["query"].to_pylist()), cycled(candidates["text"].to_pylist())
    if args.full_length:  # repeated passages, cut by truncation to exactly --max-length tokens
        docs = [" ".join([d] * 8) for d in docs]
    pairs = (queries, docs)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="rayrank-bench-engine-"))
    print(f"device={args.device} threads={args.threads or 'default'} pairs={len(pairs[0])} "
          f"max_length={args.max_length or 'model'} full_length={args.full_length} "
          f"max_tokens_per_batch={args.max_tokens_per_batch or 'default'} repeats={args.repeats} load={load_average()}")
    print(table(cross_encoder(args, pairs, work)), flush=True)
    if not args.skip_late:
        speed, quality = late_interaction(args, full, work)
        print()
        print(table(speed))
        print()
        print(table(quality, floats="{:.4f}"))
    print(f"load at end={load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
