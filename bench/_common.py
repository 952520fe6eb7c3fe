"""Helpers the benchmarks share: shared data sets, the MiniLM-shaped cross-encoder, timing and tables.

The data sets live in `../shared/data` beside the checkout (their licences forbid copying them into
the repository); a user's clone does not have them, so loaders return `None` and the bench prints
`skip_message` instead of failing.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DL20 = SHARED / "trec-dl20"
SCIFACT = SHARED / "scifact"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def skip_message(path: Path) -> str:
    return (f"skipped: {path} not found. The benchmarks read reference data from ../shared/data beside "
            "the checkout (not redistributable, so not in the repository).")


def load_candidates(path: Path, rows: int | None = None):
    """First `rows` rows of a long query-candidate Parquet file (query_id, query, doc_id, text), or None."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return None
    table = pq.read_table(path, columns=["query_id", "query", "doc_id", "text"])
    return table.slice(0, rows) if rows else table


def load_dl20(rows: int | None = None):
    """TREC-DL20 BM25 top-100 candidates and qrels, or None when ../shared is absent."""
    from rayrank.evaluate import load_qrels

    table = load_candidates(DL20 / "candidates.parquet", rows)
    if table is None:
        return None
    return table, load_qrels(DL20 / "qrels.txt")


def load_scifact(rows: int | None = None):
    """BEIR SciFact test candidates and qrels, or None when ../shared is absent."""
    from rayrank.evaluate import load_qrels

    table = load_candidates(SCIFACT / "candidates.test.parquet", rows)
    if table is None:
        return None
    return table, load_qrels(SCIFACT / "qrels.test.txt")


def scifact_corpus(path: Path) -> Path:
    """SciFact's abstracts as `doc_id`, `text` = title + " " + abstract (the text of candidates.test.parquet
    and of `rayrank.lab.data.read_corpus`), for the index job, which reads one text column. Written once."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not path.is_file():
        corpus = pq.read_table(SCIFACT / "corpus.parquet")
        text = pc.binary_join_element_wise(corpus["title"], corpus["text"], " ")
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"doc_id": corpus["doc_id"], "text": text}), path, row_group_size=1000)
    return path


def minilm_cross_encoder(folder: Path, seed: int = 0) -> Path:
    """The bundled all-MiniLM-L6-v2 backbone with a fresh seeded 1-logit head, saved with its tokenizer.

    No trained cross-encoder installs offline; this one has the real cost profile (6 layers, 384 wide)
    and, saved once, lets `sentence_transformers.CrossEncoder` and the engine load identical weights.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rayrank.models import resolve_model

    source = resolve_model(MINILM).path
    if not (folder / "config.json").is_file():
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(str(source), num_labels=1,
                                                                   local_files_only=True)
        model.save_pretrained(str(folder))
        AutoTokenizer.from_pretrained(str(source), local_files_only=True).save_pretrained(str(folder))
    return folder


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, Any]]:
    """Best time of each function, run round-robin so load spikes hit every contender alike.

    The best of several runs is the one least disturbed by other processes on a shared machine.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            gc.collect()
            started = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - started)
    return {name: (min(t), results[name]) for name, t in times.items()}


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "n/a"


def table(rows: Sequence[dict[str, Any]], floats: str = "{:.3f}") -> str:
    """A GitHub-flavoured Markdown table; floats formatted with `floats`."""
    if not rows:
        return ""
    headers = list(rows[0])
    cells = [[floats.format(v) if isinstance(v, float) else str(v) for v in row.values()] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def job_memory(args: list[str], env: dict | None = None, every: float = 0.5,
               track: str | None = None) -> tuple[float, dict, str]:
    """Run `python -m rayrank.jobs.rerank ARGS`; (seconds, peak RSS in bytes, stderr), the peaks polled from
    /proc every `every` s over the driver and its descendants only (not another job's Ray on the machine):
    "driver", "worker" (the largest Ray worker: an actor, a task or an idle one) and "ray" (Ray's own
    processes together). With `track` (a word of a Ray worker's process title, e.g. an actor's class),
    "tracked halves" is the peak of the workers that showed it, in the first and the second half of the
    run's seconds: equal halves mean that worker's memory stopped growing early in the run."""
    import subprocess
    import sys

    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "rayrank.jobs.rerank", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    driver = psutil.Process(proc.pid)
    peak, tracked, trace = {"driver": 0, "worker": 0, "ray": 0}, set(), []
    while proc.poll() is None:
        try:
            peak["driver"] = max(peak["driver"], driver.memory_info().rss)
            system, mine = 0, 0
            for child in driver.children(recursive=True):
                try:
                    rss, name = child.memory_info().rss, " ".join(child.cmdline()[:1])
                except psutil.Error:
                    continue
                if not name.startswith("ray::"):
                    system += rss
                    continue
                peak["worker"] = max(peak["worker"], rss)
                if track and (track in name or child.pid in tracked):  # an idle actor's title may drop it
                    tracked.add(child.pid)
                    mine = max(mine, rss)
            peak["ray"] = max(peak["ray"], system)
            if track:
                trace.append((time.perf_counter(), mine))
        except psutil.NoSuchProcess:
            break
        time.sleep(every)
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"job failed ({proc.returncode}): {' '.join(args)}\n{err[-3000:]}")
    seconds = time.perf_counter() - started
    if track:
        middle = started + seconds / 2
        peak["tracked halves"] = tuple(max((rss for t, rss in trace if (t >= middle) == late), default=0)
                                       for late in (False, True))
    return seconds, peak, err
