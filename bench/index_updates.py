"""Index updates: the cost of adding 1% against a full build, and IVF recall after ten appends of 10%.

Synthetic token embeddings (no model: encoding costs the same per document in a build and an add,
so leaving it out measures what an update adds on top), drawn like bench/peers.py's corpus. Engine
level (`rayrank.index.build.write_index`, `rayrank.index.update.append/compact`), one process.

1. Cost: a full build of `--docs` documents (codec training + packing every shard) against adding
   1% more (`append`: open the index, pack the new shard, publish) and deleting 1%.
2. Quality: ten appends of 10% of `--docs` each, then Recall@100 of the IVF search (default
   settings) against exact search, compared with a fresh build of the same documents. Twice: appends
   from the build's topics, and appends whose documents come more and more from topics the build
   never saw (append i: i/10 of its documents, the last one all). The fresh build gets the same
   documents shuffled, so its codec trains on a sample of all of them; with shifted appends
   `compact --retrain` is measured too. Half the queries are about the build's documents, half
   about the last append's. The codec drift ratio is printed at each measured step.

`--scifact N` instead times the real CLI with the bundled all-MiniLM-L6-v2 (embedded local Ray,
1 actor): `rayrank index` of the first N SciFact abstracts, then `rayrank index add` of the next
N/100; wall time of each process, and the add's encoding phase. Skips with a message when
../shared/data/scifact is absent.

    flock /tmp/rayrank-bench.lock python bench/index_updates.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MINILM, REPO, SCIFACT, load_average, scifact_corpus, skip_message, table

from rayrank.index import IndexReader, IvfSearcher, exact_search, update
from rayrank.index.build import write_index


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class Corpus:
    """Token embeddings like bench/peers.py's `synthetic_corpus`: a document mixes 4 topic centres (scale 1
    per dimension) plus 0.5 of noise, unit-normalised; a query is 8 of one document's tokens plus 0.3/sqrt(dim).
    `shift` is the share of documents drawn from a second set of topics the first build never saw."""

    def __init__(self, topics: int, dim: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.known = rng.standard_normal((topics, dim)).astype(np.float32)
        self.new = rng.standard_normal((topics, dim)).astype(np.float32)
        self.dim = dim

    def docs(self, n: int, seed: int, shift: float = 0.0) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            m = int(rng.integers(8, 49))
            centres = self.new if rng.random() < shift else self.known
            mixed = centres[rng.integers(0, len(centres), size=4)][rng.integers(0, 4, size=m)]
            out.append(_unit(mixed + 0.5 * rng.standard_normal((m, self.dim))).astype(np.float16))
        return out

    def queries(self, docs: list[np.ndarray], n: int, seed: int = 99) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        out = []
        for i in rng.choice(len(docs), size=n, replace=False):
            picked = docs[i][rng.integers(0, len(docs[i]), size=8)].astype(np.float32)
            out.append(_unit(picked + 0.3 / np.sqrt(self.dim) * rng.standard_normal(picked.shape)).astype(np.float32))
        return out


def recall(reader: IndexReader, queries: list[np.ndarray], k: int = 100) -> float:
    exact = exact_search(reader, queries, k)
    approx = IvfSearcher(reader).search(queries, k)
    return float(np.mean([len(set(a.doc_ids) & set(e.doc_ids)) / len(e) for a, e in zip(approx, exact)]))


def cost(corpus: Corpus, docs: int, folder: Path) -> list[dict]:
    base = corpus.docs(docs, seed=1)
    ids = [f"d{i}" for i in range(docs)]
    started = time.perf_counter()
    write_index(str(folder / "cost"), ids, base, shards=max(1, docs // 10_000))
    build = time.perf_counter() - started
    extra = corpus.docs(docs // 100, seed=2)
    started = time.perf_counter()
    update.append(str(folder / "cost"), [f"a{i}" for i in range(len(extra))], extra)
    add = time.perf_counter() - started
    started = time.perf_counter()
    update.delete(str(folder / "cost"), ids[::100])
    delete = time.perf_counter() - started
    started = time.perf_counter()
    update.compact(str(folder / "cost"))
    compact = time.perf_counter() - started
    return [{"operation": f"full build, {docs:,} docs", "seconds": build, "of build": 1.0},
            {"operation": f"add 1% ({len(extra):,} docs)", "seconds": add, "of build": add / build},
            {"operation": f"delete 1% ({len(ids[::100]):,} ids)", "seconds": delete, "of build": delete / build},
            {"operation": "compact (1% of rows dead)", "seconds": compact, "of build": compact / build}]


def appends(corpus: Corpus, docs: int, shifted: bool, folder: Path, queries: int) -> list[dict]:
    name = "shifted" if shifted else "same"
    root = folder / f"appended-{name}"
    base = corpus.docs(docs, seed=10)
    batches = [corpus.docs(docs // 10, seed=10 + step, shift=step / 10 if shifted else 0.0) for step in range(1, 11)]
    # half about documents of the build, half about the last append's (all of unseen topics when shifted)
    asked = corpus.queries(base, queries // 2) + corpus.queries(batches[-1], queries - queries // 2)
    all_docs, all_ids = list(base), [f"d{i}" for i in range(docs)]
    write_index(str(root), all_ids, base, shards=max(1, docs // 10_000))
    rows = []
    for step, batch in enumerate(batches, 1):
        ids = [f"a{step}-{i}" for i in range(len(batch))]
        m = update.append(str(root), ids, batch)
        all_docs += batch
        all_ids += ids
        if step in (1, 5, 10):
            rows.append({"appends": f"{name}: {step} x 10%", "docs": m["docs"],
                         "Recall@100 appended": recall(IndexReader(str(root)), asked),
                         "drift ratio": m["drift"]["ratio"]})
    # a fresh build of the same documents in another order: its codec sees a sample of all of them
    order = np.random.default_rng(0).permutation(len(all_ids))
    fresh = folder / f"fresh-{name}"
    write_index(str(fresh), [all_ids[i] for i in order], [all_docs[i] for i in order],
                shards=max(1, len(all_ids) // 10_000))
    rows[-1]["Recall@100 fresh build"] = recall(IndexReader(str(fresh)), asked)
    if shifted:
        update.compact(str(root), retrain=True)
        rows[-1]["after compact --retrain"] = recall(IndexReader(str(root)), asked)
    return rows


def _cli(args: list[str]) -> float:
    """Wall seconds of `python -m rayrank.jobs.index ARGS` (embedded local Ray, at the CPU priority of this process)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "RAY_worker_niceness": "0"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "rayrank.jobs.index", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"rayrank index {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def scifact(docs: int, folder: Path) -> list[dict]:
    corpus = pq.read_table(scifact_corpus(folder / "scifact.parquet"))
    pq.write_table(corpus.slice(0, docs), folder / "first.parquet")
    pq.write_table(corpus.slice(docs, docs // 100), folder / "more.parquet")
    settings = ["--config", str(folder / "job.yaml")]
    (folder / "job.yaml").write_text(json.dumps({"cluster": {"actors": "1,1"}}))
    build = _cli([str(folder / "first.parquet"), str(folder / "ix"), "--model", MINILM, *settings])
    add = _cli(["add", str(folder / "ix"), str(folder / "more.parquet"), *settings])
    m = json.loads((folder / "ix" / "_manifest.json").read_text())
    built = m["timings"]
    last = m["updates"][-1]
    return [{"operation": f"rayrank index, {docs:,} abstracts", "seconds": build, "of build": 1.0,
             "encoding s": built["encoding_s"]},
            {"operation": f"rayrank index add, {docs // 100:,} more", "seconds": add, "of build": add / build,
             "encoding s": last["encoding_s"]}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20_000, help="documents of the first build")
    parser.add_argument("--topics", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--scifact", type=int, metavar="N", help="time the CLI on N SciFact abstracts instead")
    args = parser.parse_args(argv)
    corpus = Corpus(args.topics, args.dim)
    folder = Path(tempfile.mkdtemp(prefix="rayrank-index-updates-"))
    try:
        if args.scifact:
            if not (SCIFACT / "corpus.parquet").is_file():
                print(skip_message(SCIFACT))
                return 0
            print(table(scifact(args.scifact, folder), floats="{:.2f}"))
            print(f"load average at the end: {load_average()}")
            return 0
        print(table(cost(corpus, args.docs, folder), floats="{:.3f}"))
        print()
        rows = appends(corpus, args.docs, False, folder, args.queries) + \
            appends(corpus, args.docs, True, folder, args.queries)
        columns = ["appends", "docs", "Recall@100 appended", "Recall@100 fresh build", "after compact --retrain",
                   "drift ratio"]
        print(table([{c: row.get(c, "") for c in columns} for row in rows], floats="{:.3f}"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
