"""One-command GPU benchmark: cross-encoder pairs/s by length, job efficiency, busy fraction, index docs/s.

On one GPU (about 5 minutes on an H100/H200) it measures, on the same MiniLM-L6-shaped cross-encoder
(the bundled all-MiniLM-L6-v2 with a seeded 1-logit head) and the same pairs cut to exactly 128, 256
and 512 tokens:
  - sentence-transformers `CrossEncoder.predict` in fp16 at its best batch size (of 32..512),
  - vLLM's cross-encoder scoring `LLM.score` fp16 (the engine behind Ray Data LLM's score task), when
    vLLM is installed (on the GPU machine only: `pip install vllm`),
  - the engine: torch fp16 and bf16, onnxruntime CUDA (with onnxruntime-gpu);
then the rerank job with one GPU actor vs the in-process engine on the same short synthetic pairs
(job efficiency) with the model's busy fraction, and the late-interaction index job's docs/s.
With `--decoder`, the same length table for a decoder reranker (Qwen3-Reranker-0.6B's shape, random
weights, `bench/decoder.py`): `CrossEncoder.predict` (LogitScore) against the engine, both in bf16 on
CUDA (fp16 overflows some decoders), the engine at a 16k-token budget.
Writes `--json` and prints the tables of docs/benchmarks/gpu.md. `--device cpu --quick` runs the same code in seconds
(fp32/bf16, tiny sizes, no vLLM) to check it before a GPU is lent. Example:

    python bench/gpu.py --json gpu.json                 # on the GPU machine
    python bench/gpu.py --device cpu --quick --skip-jobs
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import interleaved, load_average, minilm_cross_encoder, table  # noqa: E402
from bench.synthetic import WORDS, write  # noqa: E402

LENGTHS = (128, 256, 512)
ST_BATCHES = (32, 64, 128, 256, 512)


def exact_length_pairs(pairs: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Short queries with documents long enough that truncation cuts every pair to the length asked for."""
    import numpy as np

    rng = np.random.default_rng(seed)
    queries = [" ".join(WORDS[rng.integers(0, len(WORDS), 6)]) for _ in range(pairs)]
    docs = [" ".join(WORDS[rng.integers(0, len(WORDS), 600)]) for _ in range(pairs)]
    return queries, docs


def _st_predict(model_dir: Path, device: str, length: int, queries, docs, batch: int, decoder: bool = False):
    import torch
    from sentence_transformers import CrossEncoder

    dtype = torch.bfloat16 if decoder else torch.float16
    half = {"model_kwargs": {"dtype": dtype}} if device == "cuda" else {}
    model = CrossEncoder(str(model_dir), device=device, max_length=length, activation_fn=torch.nn.Identity(), **half)
    pairs = list(zip(queries, docs))
    model.predict(pairs[:batch], batch_size=batch, show_progress_bar=False)  # warm-up
    return lambda: model.predict(pairs, batch_size=batch, show_progress_bar=False)


def _vllm_score(model_dir: Path, length: int, queries, docs):
    """vLLM's score task, or the reason it cannot run here (not installed, no GPU, API change)."""
    try:
        from vllm import LLM
    except ImportError:
        return "vllm not installed (pip install vllm on the GPU machine)"
    try:
        llm = LLM(model=str(model_dir), runner="pooling", dtype="float16", max_model_len=length,
                  enforce_eager=False, gpu_memory_utilization=0.5)
    except TypeError:  # vLLM before the runner/convert split
        llm = LLM(model=str(model_dir), task="score", dtype="float16", max_model_len=length,
                  gpu_memory_utilization=0.5)
    truncate = {"truncate_prompt_tokens": length}
    llm.score(queries[:32], docs[:32], use_tqdm=False, **truncate)
    return lambda: llm.score(queries, docs, use_tqdm=False, **truncate)


def engine_variants(device: str, decoder: bool = False) -> list[tuple[str, dict]]:
    if decoder and device == "cuda":  # bf16: a decoder's activations can pass fp16's range
        return [("engine torch bf16", {"backend": "torch", "dtype": "bfloat16"})]
    if device == "cpu":
        # named, not auto: a CPU without native bf16 has no auto setting for it, and the rows say torch
        return [("engine torch fp32", {"backend": "torch", "dtype": "float32"}),
                ("engine torch bf16", {"backend": "torch", "dtype": "bfloat16"})]
    import onnxruntime

    variants = [("engine torch fp16", {"backend": "torch", "dtype": "float16"}),
                ("engine torch bf16", {"backend": "torch", "dtype": "bfloat16"})]
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        variants.append(("engine onnxruntime cuda", {"backend": "onnx"}))
    return variants


def decoder_engine(device: str) -> dict[str, int]:
    """The decoder's engine settings: on CUDA a 16k-token budget (a 0.6B model saturates an H100 there; the
    encoders' 64k holds 4x the activations for no gain), on CPU the engine's decoder default."""
    return {"max_tokens_per_batch": 16_384, "max_batch_size": 1024} if device == "cuda" else {}


def engine_rows(model_dir: Path, args, work: Path, decoder: bool = False) -> list[dict[str, Any]]:
    """Pairs/s of every contender at every length; each length's contenders run round-robin."""
    import rayrank

    queries, docs = exact_length_pairs(args.pairs)
    rows = []
    for length in args.decoder_lengths if decoder else args.lengths:
        contenders: dict[str, Any] = {}
        notes: dict[str, str] = {}
        for batch in args.st_batches:
            contenders[f"sentence-transformers {'bf16' if decoder else 'fp16'} predict, batch {batch}"] = _st_predict(
                model_dir, args.device, length, queries, docs, batch, decoder)
        if args.device == "cuda" and not decoder:
            vllm = _vllm_score(model_dir, length, queries, docs)
            if isinstance(vllm, str):
                notes["vLLM LLM.score fp16"] = vllm
            else:
                contenders["vLLM LLM.score fp16"] = vllm
        for label, settings in engine_variants(args.device, decoder):
            engine = decoder_engine(args.device) if decoder else args.engine
            reranker = rayrank.Reranker(str(model_dir), device=args.device, max_length=length,
                                        cache_dir=str(work / "onnx"), **settings, **engine)
            reranker.score_pairs(queries[:64], docs[:64])  # warm-up: allocator, CUDA context, kernels
            contenders[label] = lambda r=reranker: r.score_pairs(queries, docs).scores
        timed = interleaved(contenders, args.repeats)
        st = {k: v for k, v in timed.items() if k.startswith("sentence-transformers")}
        best = min(st, key=lambda k: st[k][0])
        for label, (seconds, _) in timed.items():
            if label.startswith("sentence-transformers") and label != best:
                continue
            rows.append({"tokens": length, "contender": label.replace("predict, batch", "predict (best: batch") +
                         (")" if label == best else ""), "pairs/s": args.pairs / seconds,
                         "x sentence-transformers": st[best][0] / seconds})
        rows += [{"tokens": length, "contender": label, "pairs/s": None, "x sentence-transformers": None,
                  "note": note} for label, note in notes.items()]
    return rows


def _job(module: str, inputs: Path, out: Path, config: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", module, str(inputs), str(out), "--config", str(config)],
                          cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{module} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads((out / "_manifest.json").read_text())


def job_rows(model_dir: Path, args, work: Path) -> list[dict[str, Any]]:
    """The rerank job with one GPU actor vs the in-process engine; the index job's docs/s."""
    import os

    import pyarrow.parquet as pq

    import rayrank

    write(work / "pairs", args.job_rows, rows_per_file=args.job_rows)
    table_ = pq.read_table(work / "pairs")
    queries, texts = table_["query"].to_pylist(), table_["text"].to_pylist()
    reranker = rayrank.Reranker(str(model_dir), device=args.device, **args.engine)
    reranker.score_pairs(queries[:256], texts[:256])
    started = time.perf_counter()
    reranker.score_pairs(queries, texts)
    in_process = args.job_rows / (time.perf_counter() - started)
    del reranker

    cpus = max(1, (os.cpu_count() or 2) - 1)  # one stays for the rank tasks and the driver
    gpus = 1 if args.device == "cuda" else 0
    engine = "".join(f"  {k}: {v}\n" for k, v in args.engine.items())
    cluster = f"cluster:\n  actors: 1,1\n  cpus_per_actor: {cpus}\n  gpus_per_actor: {gpus}\n"
    config = work / "rerank.yaml"
    config.write_text(f"shard_rows: {math.ceil(args.job_rows / 20)}\nengine:\n  model: {model_dir}\n"
                      f"  device: {args.device}\n{engine}{cluster}")
    rerank = _job("rayrank.jobs.rerank", work / "pairs", work / "reranked", config)
    rate = rerank["timings"]["steady_pairs_per_s"]
    rows = [{"job": "in-process engine, same pairs", "rate": in_process, "unit": "pairs/s", "x in-process": 1.0,
             "model busy": None},
            {"job": f"rerank job, 1 actor ({gpus} GPU, {cpus} CPUs)", "rate": rate, "unit": "pairs/s",
             "x in-process": rate / in_process, "model busy": rerank["phases"]["model_busy"]}]

    docs = table_.select(["doc_id", "text"]).slice(0, args.index_docs)
    pq.write_table(docs, work / "docs.parquet", row_group_size=max(1, args.index_docs // 20))
    config = work / "index.yaml"
    config.write_text(f"shard_rows: {math.ceil(args.index_docs / 20)}\nengine:\n  device: {args.device}\n"
                      f"{cluster}")
    index = _job("rayrank.jobs.index", work / "docs.parquet", work / "index", config)
    rows.append({"job": f"index job (all-MiniLM-L6-v2 late interaction), 1 actor ({gpus} GPU)",
                 "rate": index["timings"]["steady_docs_per_s"], "unit": "docs/s", "x in-process": None,
                 "model busy": index["phases"]["model_busy"]})
    return rows


def _engine_table(rows: list[dict[str, Any]]) -> str:
    notes = any(row.get("note") for row in rows)
    engines = []
    for row in rows:
        rate, ratio = row["pairs/s"], row["x sentence-transformers"]
        engines.append({"tokens": row["tokens"], "contender": row["contender"],
                        "pairs/s": "n/a" if rate is None else f"{rate:,.0f}",
                        "x sentence-transformers": "n/a" if ratio is None else f"{ratio:.2f}",
                        **({"note": row.get("note", "")} if notes else {})})
    return table(engines)


def report(result: dict[str, Any]) -> str:
    """The docs' GPU tables from a result JSON: engines by length, the decoder (if timed), then jobs."""
    env = result["environment"]
    lines = [f"{env['gpu']} — torch {env['torch']}, {env['cpus']} CPUs, load {env['load']}; "
             f"{result['settings']['pairs']:,} pairs per length, best of {result['settings']['repeats']}", ""]
    lines.append(_engine_table(result["engines"]))
    if result.get("decoder"):
        lines += ["", f"decoder reranker ({result['settings']['decoder_model']}):", "",
                  _engine_table(result["decoder"])]
    if result.get("jobs"):
        jobs = [{"job": r["job"], "rate": f"{r['rate']:,.0f} {r['unit']}",
                 "x in-process": "n/a" if r["x in-process"] is None else f"{r['x in-process']:.2f}",
                 "model busy": "n/a" if r["model busy"] is None else f"{r['model busy']:.2f}"} for r in result["jobs"]]
        lines += ["", table(jobs)]
    goal = [r for r in result["engines"] if r["tokens"] == 256 and r["contender"].startswith("engine")
            and r["pairs/s"] is not None]
    if goal:
        best = max(goal, key=lambda r: r["pairs/s"])
        lines += ["", f"goal at 256 tokens: >= 40,000 pairs/s; best engine {best['pairs/s']:,.0f} ({best['contender']})"]
    return "\n".join(lines)


def _environment(device: str) -> dict[str, Any]:
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    return {"gpu": gpu, "torch": torch.__version__, "cpus": os.cpu_count(), "load": load_average(),
            "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the same code (CPU)")
    parser.add_argument("--model", type=Path, help="cross-encoder directory (default: MiniLM-L6-shaped, seeded)")
    parser.add_argument("--pairs", type=int, help="pairs per length (default 20,000; quick 64)")
    parser.add_argument("--repeats", type=int, help="round-robin rounds, best counts (default 3; quick 1)")
    parser.add_argument("--job-rows", type=int, help="rerank job input rows (default 400,000; quick 2,000)")
    parser.add_argument("--index-docs", type=int, help="index job documents (default 100,000; quick 400)")
    parser.add_argument("--skip-jobs", action="store_true", help="engine table only (no Ray)")
    parser.add_argument("--decoder", action="store_true",
                        help="also time a decoder reranker (Qwen3-Reranker-0.6B-shaped, random weights)")
    parser.add_argument("--decoder-model", type=Path, help="the decoder to time instead (implies --decoder)")
    parser.add_argument("--json", type=Path, default=Path("gpu-bench.json"), help="where to write the results")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("bench/gpu.py: no CUDA GPU visible to torch; run it on a GPU machine, or try "
                  "--device cpu --quick to check the script", file=sys.stderr)
            return 2
    quick = args.quick
    args.pairs = args.pairs or (64 if quick else 20_000)
    args.repeats = args.repeats or (1 if quick else 3)
    args.job_rows = args.job_rows or (2_000 if quick else 400_000)
    args.index_docs = args.index_docs or (400 if quick else 100_000)
    args.lengths = (32, 64) if quick and args.model else LENGTHS  # a tiny model reads 64 tokens at most
    args.decoder_lengths = (160, 200) if quick and args.decoder_model else LENGTHS  # over a tiny one's prompt
    args.st_batches = (32, 64) if quick else ST_BATCHES
    # GPU batches: a 64k-token budget keeps the device busy (configs/rerank.nightly.yaml).
    args.engine = {"max_tokens_per_batch": 65536, "max_batch_size": 1024} if args.device == "cuda" else {}
    work = Path(tempfile.mkdtemp(prefix="rayrank-bench-gpu-"))
    model_dir = args.model or minilm_cross_encoder(work / "minilm-1logit")
    started = time.perf_counter()
    result = {"environment": _environment(args.device),
              "settings": {"device": args.device, "pairs": args.pairs, "repeats": args.repeats,
                           "lengths": list(args.lengths), "engine": args.engine, "model": str(model_dir)},
              "engines": engine_rows(model_dir, args, work)}
    if args.decoder or args.decoder_model:
        from bench.decoder import QWEN3_RERANKER_0_6B, qwen3_reranker_shaped

        decoder_dir = args.decoder_model or qwen3_reranker_shaped(work / "qwen3-reranker-0.6b-shaped",
                                                                  [" ".join(WORDS)] * 100, QWEN3_RERANKER_0_6B)
        result["settings"]["decoder_model"] = str(decoder_dir)
        result["decoder"] = engine_rows(decoder_dir, args, work, decoder=True)
    if not args.skip_jobs:
        result["jobs"] = job_rows(model_dir, args, work)
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.json.write_text(json.dumps(result, indent=2))
    print(report(result))
    print(f"\nwrote {args.json} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
