"""Batch job throughput vs the engine in-process, and the cost of resuming a killed job.

Runs, on the same pairs (the first N rows of ../shared/data/trec-dl20/candidates.parquet):
  1. the engine in-process (`Reranker.score_pairs`, the baseline a user would write),
  2. the rerank job on an embedded local Ray,
  3. the job (driver and its local Ray) killed with SIGKILL once 90% of its shards are committed,
     then rerun (resume),
and prints pairs/s and ratios. `--case tokenizer-heavy` instead runs short synthetic pairs
(bench/synthetic.py) through a tiny random cross-encoder, where tokenizing costs as much as the
model: one actor of 2 CPUs with a 1-thread model, with and without prefetching shards inside the
actor (`cluster.prefetch_shards` 1 vs 0, alternating), against the in-process serial rate
(tokenize, then score, one thread), also with the collector frozen after loading as the job's
actors do. Examples:

    python bench/job.py --rows 2000 --scorer late-interaction
    python bench/job.py --case tokenizer-heavy --rows 200000
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
DL20 = REPO.parent / "shared" / "data" / "trec-dl20" / "candidates.parquet"


def _job(args: list[str]) -> subprocess.Popen:
    # A session of its own: the kill below takes the driver and the local Ray it started (actors
    # included), as a crashed machine would; killing the driver alone lets busy actors finish.
    return subprocess.Popen([sys.executable, "-m", "rayrank.jobs.rerank", *args], cwd=REPO, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _timed_job(args: list[str]) -> tuple[float, dict]:
    started = time.perf_counter()
    proc = _job(args)
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"job failed with exit code {proc.returncode}: {' '.join(args)}\n{err[-3000:]}")
    return time.perf_counter() - started, json.loads((Path(args[1]) / "_manifest.json").read_text())


def tokenizer_heavy(rows: int, repeats: int) -> int:
    """Job with and without in-actor prefetch vs the serial in-process engine, on short synthetic pairs."""
    sys.path.insert(0, str(REPO))
    from bench.synthetic import write
    from tests.tiny_models import make_cross_encoder

    work = Path(tempfile.mkdtemp(prefix="rayrank-bench-tok-"))
    model = make_cross_encoder(work / "tiny-ce")
    write(work / "pairs", rows, rows_per_file=rows)
    table = pq.read_table(work / "pairs")
    queries, texts = table["query"].to_pylist(), table["text"].to_pylist()

    env = dict(os.environ)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the serial baseline: the Rust tokenizer on one thread
    import rayrank

    reranker = rayrank.Reranker(str(model), threads=1)
    reranker.score_pairs(queries[:256], texts[:256])  # warm-up

    def serial() -> float:
        started = time.perf_counter()
        reranker.score_pairs(queries, texts)
        return rows / (time.perf_counter() - started)

    def job(prefetch: int, run: int) -> dict:
        config = work / f"job-{prefetch}.yaml"
        config.write_text(f"shard_rows: {math.ceil(rows / 20)}\nengine:\n  model: {model}\n  threads: 1\n"
                          f"cluster:\n  actors: 1,1\n  cpus_per_actor: 2\n  prefetch_shards: {prefetch}\n")
        out = work / f"out-{prefetch}-{run}"
        proc = subprocess.run([sys.executable, "-m", "rayrank.jobs.rerank", str(work / "pairs"), str(out),
                               "--config", str(config)], cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"job failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads((out / "_manifest.json").read_text())

    def serial_frozen() -> float:
        """The same, with the collector's view frozen after loading, as the job's actors do (gc.freeze)."""
        gc.freeze()
        try:
            return serial()
        finally:
            gc.unfreeze()

    serial_rates, frozen_rates, runs = [], [], {0: [], 1: []}
    for run in range(repeats):  # alternating, so load drift hits every contender alike
        serial_rates.append(serial())
        frozen_rates.append(serial_frozen())
        for prefetch in (1, 0):
            runs[prefetch].append(job(prefetch, run))
    base, frozen = max(serial_rates), max(frozen_rates)
    print(f"\nrerank job vs serial in-process engine — {rows:,} short synthetic pairs, tiny random cross-encoder, "
          f"1 actor x 2 CPUs, engine.threads 1, 20 shards; best of {repeats}\n")
    print(f"{'':34} {'pairs/s':>9} {'ratio':>6} {'busy':>5}  phases summed over shards (s)")
    print(f"{'in-process serial (baseline)':34} {base:>9,.1f} {1:>6.2f}")
    print(f"{'in-process serial, gc.freeze()':34} {frozen:>9,.1f} {frozen / base:>6.2f}")
    for prefetch, label in ((0, "job, one shard at a time"), (1, "job, prefetch 1 shard (default)")):
        best = max(runs[prefetch], key=lambda m: m["timings"]["steady_pairs_per_s"])
        rate, ph = best["timings"]["steady_pairs_per_s"], best["phases"]
        print(f"{label:34} {rate:>9,.1f} {rate / base:>6.2f} {ph['model_busy']:>5.2f}  read {ph['read_s']:.1f}, "
              f"validate {ph['validate_s']:.1f}, tokenize {ph['tokenize_s']:.1f}, model {ph['model_s']:.1f}, "
              f"write {ph['write_s']:.1f}")
    best = max(m["timings"]["steady_pairs_per_s"] for m in runs[1])
    print(f"\nactors-running rates (first shard start to last shard end); prefetch vs the gc.freeze() serial rate "
          f"{best / frozen:.2f}x; load average {_load()}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="dl20", choices=["dl20", "tokenizer-heavy"])
    parser.add_argument("--repeats", type=int, default=2, help="tokenizer-heavy: alternating runs of each")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--scorer", default="late-interaction", choices=["late-interaction", "cross-encoder"])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2",
                        help="for cross-encoder, a local directory (no trained cross-encoder ships offline)")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    parser.add_argument("--actors", default="2,2")
    parser.add_argument("--cpus-per-actor", type=float, default=1)
    parser.add_argument("--shards", type=int, default=20, help="input shards the job is planned into")
    args = parser.parse_args(argv)
    if args.case == "tokenizer-heavy":
        return tokenizer_heavy(args.rows, args.repeats)
    if not DL20.is_file():
        print(f"skipped: {DL20} not found (the benchmark reads the shared TREC-DL20 candidates)")
        return 0

    import rayrank

    work = Path(tempfile.mkdtemp(prefix="rayrank-bench-job-"))
    table = pq.read_table(DL20).slice(0, args.rows)
    pq.write_table(table, work / "pairs.parquet")

    reranker = rayrank.Reranker(args.model, scorer=args.scorer, backend=args.backend)
    queries, texts = table["query"].to_pylist(), table["text"].to_pylist()
    reranker.score_pairs(queries[:64], texts[:64])  # warm-up

    def in_process_rate() -> float:
        started = time.perf_counter()
        reranker.score_pairs(queries, texts)
        return args.rows / (time.perf_counter() - started)

    common = ["--scorer", args.scorer, "--model", args.model, "--backend", args.backend, "--actors", args.actors]
    # Shards of rows/--shards (20: a kill at 90% falls between shards, not after the last one);
    # both runs use the same plan, so the rerun is compared with the same job.
    config = work / "job.yaml"
    config.write_text(f"shard_rows: {math.ceil(args.rows / args.shards)}\n"
                      f"cluster:\n  cpus_per_actor: {args.cpus_per_actor}\n")
    # In-process is measured before and after the job, so drifting machine load hits both sides.
    before = in_process_rate()
    full_s, manifest = _timed_job([str(work / "pairs.parquet"), str(work / "full"), "--config", str(config), *common])
    in_process = (before + in_process_rate()) / 2
    del reranker
    scoring_rate = manifest["timings"]["pairs_per_s"]
    steady_rate = manifest["timings"]["steady_pairs_per_s"]

    out = work / "resume"
    job_args = [str(work / "pairs.parquet"), str(out), "--config", str(config), *common]
    proc = _job(job_args)
    shards, markers = manifest["shards"], out / "_staging" / "done" / "shards"
    committed = 0
    while proc.poll() is None and committed < int(0.9 * shards):
        time.sleep(0.05)
        committed = len(list(markers.glob("*.json"))) if markers.exists() else 0
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resume_s, resumed = _timed_job(job_args)

    rows = [
        ("engine in-process (baseline)", f"{in_process:,.1f}", "1.00", ""),
        ("job, actors running", f"{steady_rate:,.1f}", f"{steady_rate / in_process:.2f}",
         "first shard start to last shard end: read, validate, score, stage"),
        ("job, scoring phase", f"{scoring_rate:,.1f}", f"{scoring_rate / in_process:.2f}",
         "the above plus actor start and model load"),
        ("job, end to end", f"{args.rows / full_s:,.1f}", f"{args.rows / full_s / in_process:.2f}",
         f"{full_s:.1f} s incl. Ray start and ranking"),
        (f"rerun after SIGKILL at {committed}/{shards} shards", "", "",
         f"{resume_s:.1f} s = {resume_s / full_s:.0%} of a full run; reused "
         f"{resumed['counts']['rows_reused']:,} of {args.rows:,} rows"),
    ]
    print(f"\nrerank job vs in-process engine — {args.rows:,} TREC-DL20 pairs, {args.scorer}, {args.backend}, "
          f"actors {args.actors} x {args.cpus_per_actor:g} CPU, {shards} shards of about "
          f"{args.rows // shards:,} rows\n")
    print(f"{'':32} {'pairs/s':>9} {'ratio':>6}  note")
    for name, rate, ratio, note in rows:
        print(f"{name:32} {rate:>9} {ratio:>6}  {note}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
