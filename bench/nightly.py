"""Three nights of logged reranking over one corpus: incremental partitions with the score cache on.

Builds three synthetic nights of logs (`query_id`, `query`, `doc_id`, `bm25_rank`; no text) from
SciFact's BM25 candidates (../shared/data/scifact): night 1 is `--pairs` (query, doc) pairs; each
later night keeps `--repeat` (0.8) of the previous night's pairs and adds fresh ones from the pool.
The corpus is SciFact's abstracts (`doc_id`, `text`). Each night is added as a partition
`dt=2026-12-0N/` and run with `rayrank rerank LOGS OUT --corpus CORPUS --cache CACHE --partitions new`
(one job per night, each starting its own local Ray, as a nightly schedule would). Then each later
night is run cold (no cache) into another OUTPUT and compared with the cached run: same rows, same
ranks, and the largest score difference. Prints a Markdown table: pairs, pairs scored, cache hits,
seconds and the ratio to night 1. Example:

    python bench/nightly.py --pairs 6000 --max-length 256

`--scale 500000,1000000,...` measures memory instead: for each size, a synthetic night of that many
log rows (20 candidates a query) over a corpus of a tenth as many documents, run once with
`--corpus` and `--cache` and a tiny random BERT cross-encoder (tests/tiny_models.py), sampling the
resident memory of the driver and of every Ray worker process it started (actors and tasks) from
/proc every half second. Prints each size's seconds and peak RSS, and the scoring actor's peak in the
first and the second half of the run: flat memory is the claim. The seconds in the model, in tokenizing
and in the score cache (lookups and writes), summed over units, come from the job's manifest. The
scoring actor keeps up to `cache.max_memory_bytes` of decoded cache entries (28 bytes each; 256 MiB,
about 9.6 million, by default); `--cache-memory-mb` sets it lower, so that the sizes run lie past
that cap.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import (SCIFACT, job_memory, load_average, minilm_cross_encoder, scifact_corpus,
                           skip_message, table)


def nights(pairs: int, repeat: float, count: int, seed: int) -> list[list[dict]]:
    """`count` nights of log rows; night k+1 keeps `repeat` of night k's (query, doc) pairs."""
    import pyarrow.parquet as pq

    pool = pq.read_table(SCIFACT / "candidates.test.parquet",
                         columns=["query_id", "query", "doc_id", "bm25_rank"]).to_pylist()
    rng = random.Random(seed)
    rng.shuffle(pool)
    if pairs * (1 + (1 - repeat) * (count - 1)) > len(pool):
        raise SystemExit(f"--pairs {pairs}: the pool holds {len(pool)} pairs, too few for {count} nights")
    fresh = iter(pool)
    result = [[next(fresh) for _ in range(pairs)]]
    for _ in range(count - 1):
        kept = rng.sample(result[-1], round(pairs * repeat))
        result.append(kept + [next(fresh) for _ in range(pairs - len(kept))])
    return result


def synthetic_night(folder: Path, rows: int, docs: int, seed: int) -> tuple[Path, Path]:
    """(log, corpus) Parquet files: `rows` log rows, 20 a query, naming documents drawn from `docs`."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tests.tiny_models import WORDS

    rng = np.random.default_rng(seed)
    words = pa.array(WORDS)

    def text(n: int, length: int) -> pa.Array:
        picks = [words.take(pa.array(rng.integers(0, len(WORDS), n))) for _ in range(length)]
        return pc.binary_join_element_wise(*picks, " ")

    def ids(prefix: str, numbers) -> pa.Array:
        return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), "")

    folder.mkdir(parents=True, exist_ok=True)
    corpus, log = folder / "corpus.parquet", folder / "log" / "part0.parquet"
    pq.write_table(pa.table({"doc_id": ids("d", np.arange(docs)), "text": text(docs, 24)}), corpus,
                   row_group_size=100_000)
    queries = rows // 20
    qids = np.repeat(np.arange(queries), 20)
    log.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"query_id": ids("q", qids), "query": text(queries, 6).take(pa.array(qids)),
                             # 20 different documents a query: a start and 19 steps of docs // 20
                             "doc_id": ids("d", ((rng.integers(0, docs, queries)[:, None]
                                                  + np.arange(20) * (docs // 20)) % docs).ravel()),
                             "bm25_rank": np.tile(np.arange(1, 21, dtype=np.int32), queries)}),
                   log, row_group_size=100_000)
    return log.parent, corpus


def scale(sizes: list[int], work: Path, actors: str, cache_memory_mb: int | None) -> list[dict]:
    """One cached night with a corpus at each size; the table's rows."""
    from tests.tiny_models import make_cross_encoder

    model = make_cross_encoder(work / "tiny-ce")
    config = work / "job.yaml"
    config.write_text(f"engine:\n  model: {model}\n  scorer: cross-encoder\n  backend: torch\n  threads: 1\n"
                      f"cluster:\n  actors: {actors}\n  cpus_per_actor: 2\n"
                      + (f"cache:\n  max_memory_bytes: {cache_memory_mb << 20}\n" if cache_memory_mb else ""))
    rows = []
    for size in sizes:
        log, corpus = synthetic_night(work / f"in-{size}", size, size // 10, seed=size)
        out, cache = work / f"out-{size}", work / f"cache-{size}"
        seconds, peak, _ = job_memory([str(log), str(out), "--config", str(config), "--corpus", str(corpus),
                                     "--cache", str(cache)], track="ShardScorer")
        manifest = json.loads((out / "_manifest.json").read_text())
        row = {"log rows": size, "corpus docs": size // 10, "rows written": manifest["counts"]["rows_written"],
               "seconds": round(seconds), "rows/s": round(size / seconds),
               "model s": round(manifest["phases"]["model_s"]), "tokenize s": round(manifest["phases"]["tokenize_s"]),
               "cache s": round(manifest["cache"]["seconds"]),
               "driver peak MB": round(peak["driver"] / 2**20), "largest worker peak MB": round(peak["worker"] / 2**20),
               "Ray processes peak MB": round(peak["ray"] / 2**20),
               "scoring actor, 1st / 2nd half MB": " / ".join(str(round(b / 2**20)) for b in peak["tracked halves"])}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        for folder in (out, cache, log.parent):
            shutil.rmtree(folder, ignore_errors=True)
    return rows


def rerank(args: list[str]) -> tuple[float, dict]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rayrank.jobs.rerank", *args], cwd=REPO, capture_output=True,
                          check=False, text=True)
    if proc.returncode:
        raise SystemExit(f"job failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started, proc.stdout


def read(folder: Path):
    import pyarrow.parquet as pq

    return pq.read_table(folder, partitioning=None).sort_by([("query_id", "ascending"), ("doc_id", "ascending")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=6000, help="(query, doc) pairs a night (default: 6000)")
    parser.add_argument("--repeat", type=float, default=0.8, help="share of the previous night's pairs (default: 0.8)")
    parser.add_argument("--nights", type=int, default=3, help="nights (default: 3)")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per pair (default: 256)")
    parser.add_argument("--actors", default="1,1", help="MIN,MAX actors (default: 1,1)")
    parser.add_argument("--backend", default="torch", help="engine backend (default: torch; auto would measure "
                        "the backends on night 1 only, once a machine, which is not a night's cost)")
    parser.add_argument("--skip-cold", action="store_true", help="do not run the later nights cold to compare")
    parser.add_argument("--work", help="folder for logs, outputs and the cache (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument("--scale", help="comma-separated log sizes: measure peak memory instead (see above)")
    parser.add_argument("--cache-memory-mb", type=int, help="with --scale: the actor's decoded cache cap "
                        "(cache.max_memory_bytes) in MiB (default: the job's, 256)")
    args = parser.parse_args(argv)
    if args.scale:
        work = Path(args.work or tempfile.mkdtemp(prefix="rayrank-nightly-scale-"))
        rows = scale([int(s) for s in args.scale.split(",")], work, args.actors, args.cache_memory_mb)
        print(f"load average at the end: {load_average()}; work folder: {work}")
        print(table(rows))
        return 0
    if not (SCIFACT / "candidates.test.parquet").is_file():
        print(skip_message(SCIFACT))
        return 0
    import pyarrow as pa
    import pyarrow.parquet as pq

    work = Path(args.work or tempfile.mkdtemp(prefix="rayrank-nightly-"))
    shutil.rmtree(work / "logs", ignore_errors=True)
    for folder in ("out", "cache", "cold"):
        shutil.rmtree(work / folder, ignore_errors=True)
    model = minilm_cross_encoder(work / "model")
    corpus = scifact_corpus(work / "corpus.parquet")
    common = ["--model", str(model), "--scorer", "cross-encoder", "--backend", args.backend,
              "--max-length", str(args.max_length),
              "--actors", args.actors, "--corpus", str(corpus)]
    rows, first = [], None
    logs = nights(args.pairs, args.repeat, args.nights, args.seed)
    for number, log in enumerate(logs, start=1):
        name = f"dt=2026-12-{number:02d}"
        pq.write_table(pa.Table.from_pylist(log), (work / "logs" / name).mkdir(parents=True) or
                       work / "logs" / name / "part0.parquet")
        seconds, _ = rerank([str(work / "logs"), str(work / "out"), *common, "--cache", str(work / "cache"),
                             "--partitions", "new"])
        counts = json.loads((work / "out" / name / "_manifest.json").read_text())["counts"]
        first = first or seconds
        row = {"night": name, "pairs": len(log), "pairs scored": counts["pairs_scored"],
               "from cache": counts["cache_hits"], "seconds": round(seconds, 1),
               "vs night 1": round(seconds / first, 3)}
        if number > 1 and not args.skip_cold:
            cold_s, _ = rerank([str(work / "logs" / name), str(work / "cold" / name), *common])
            cached, cold = read(work / "out" / name), read(work / "cold" / name)
            same = cached.select(["query_id", "doc_id", "rank"]).equals(cold.select(["query_id", "doc_id", "rank"]))
            delta = max(abs(a - b) for a, b in zip(cached["score"].to_pylist(), cold["score"].to_pylist()))
            row.update({"cold seconds": round(cold_s, 1), "same ids and ranks as cold": same,
                        "max |Δscore| vs cold": f"{delta:.1e}"})
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"load average at the end: {load_average()}; work folder: {work}")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    print(table([{key: row.get(key, "—") for key in columns} for row in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
