"""Overlap inside a job actor, and the per-phase seconds that show whether the model was kept busy.

An actor runs `cluster.prefetch_shards + 1` shard calls at once (Ray Data threads): while one call
holds the model, the others read, validate and tokenize the next shards, and writes go out after
the model is released. One model call runs at a time (one device, and the accounting below); the
tokenizer takes turns by itself (`rayrank.tokenize`: truncation is state on the Rust tokenizer, and
each encode call already runs on the CPUs the model leaves), converting its output outside that turn.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

PHASES = ("read_s", "validate_s", "tokenize_s", "model_wait_s", "model_s", "write_s")
TOKENS = ("tokens", "tokens_computed")  # attended tokens; tokens the model ran, padding included


def split_cpus(cpus_per_actor: float, model_threads: int | None, prefetch_shards: int) -> None:
    """Give the tokenizer the actor's CPUs the model does not use; call before the first tokenizer call.

    The Rust tokenizer's thread pool takes every core of the machine by default; while it encodes the
    next shard beside a model running `engine.threads` threads, both would fight for the same cores.
    When the shard calls alone can use those CPUs (each encodes on its own thread: rayrank.tokenize),
    the pool is turned off, which also saves its hand-offs; else it gets what the model leaves. With
    `engine.threads` unset (a GPU actor, or torch on all of them) or no prefetch (nothing runs beside
    the tokenizer) it keeps all CPUs.
    """
    if not (prefetch_shards and model_threads and cpus_per_actor > model_threads):
        return
    if "RAYON_NUM_THREADS" in os.environ or "TOKENIZERS_PARALLELISM" in os.environ:
        return  # the user's setting wins
    spare = max(1, math.floor(cpus_per_actor - model_threads))
    if spare <= prefetch_shards + 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    else:
        os.environ["RAYON_NUM_THREADS"] = str(spare)


class Phases:
    """Seconds per phase of one shard call; `model_s` and `model_wait_s` are filled by the model gate."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.tokens = dict.fromkeys(TOKENS, 0)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started

    def as_stats(self) -> dict[str, float]:
        return {**{k: round(v, 4) for k, v in self.seconds.items()}, **self.tokens}


class _SerialBackend:
    """The scorer's backend behind the model gate's lock; the calling shard's `Phases` gets its wait and model seconds.

    A shard call takes the lock at its first batch and keeps it until the call ends (`ModelGate.engine`)
    rather than taking turns batch by batch: turns would keep two shards in step (both tokenizing,
    then both waiting on the model), where one shard's batches run while the next shard tokenizes.
    """

    def __init__(self, backend, lock: threading.Lock, local: threading.local) -> None:
        self._backend, self._lock, self._local = backend, lock, local
        self.name, self.device = backend.name, backend.device

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        phases: Phases | None = getattr(self._local, "phases", None)
        asked = time.perf_counter()
        if not getattr(self._local, "holding", False):
            self._lock.acquire()
            self._local.holding = True
        got = time.perf_counter()
        out = self._backend.run(batch)
        done = time.perf_counter()
        if phases is not None:
            phases.seconds["model_wait_s"] += got - asked
            phases.seconds["model_s"] += done - got
            phases.tokens["tokens"] += int(batch["attention_mask"].sum())
            phases.tokens["tokens_computed"] += int(batch["input_ids"].size)
        return out

    def release(self) -> None:
        """End the calling thread's turn on the model, if it has one."""
        if getattr(self._local, "holding", False):
            self._local.holding = False
            self._lock.release()

    def __getattr__(self, name: str) -> Any:  # anything else a scorer asks of its backend
        return getattr(self._backend, name)


class ModelGate:
    """Makes one scorer safe for concurrent shard calls and attributes model time to each call.

    Everything the scorer does outside its backend (tokenizing, padding batches, MaxSim) counts as
    tokenizing: it is the CPU work that a GPU waits for.
    """

    def __init__(self, scorer) -> None:
        self._local = threading.local()
        self._backend = _SerialBackend(scorer.backend, threading.Lock(), self._local)
        scorer.backend = self._backend

    @contextmanager
    def shard(self, phases: Phases) -> Iterator[None]:
        """Bind `phases` to the calling thread for the duration of one shard call."""
        self._local.phases = phases
        try:
            yield
        finally:
            self._local.phases = None

    @contextmanager
    def engine(self, phases: Phases) -> Iterator[None]:
        """Time an engine call, which holds the model from its first batch to its end; its wall time
        minus the model gate's share is tokenizing."""
        before = phases.seconds["model_s"] + phases.seconds["model_wait_s"]
        started = time.perf_counter()
        try:
            yield
        finally:
            self._backend.release()
            inside = phases.seconds["model_s"] + phases.seconds["model_wait_s"] - before
            phases.seconds["tokenize_s"] += time.perf_counter() - started - inside


def summarize(units: list[dict[str, Any]]) -> dict[str, Any]:
    """Job totals of the phase seconds of `units` (shard stats) and the model's busy fraction.

    Busy fraction = model seconds / actor wall seconds, where an actor's wall time runs from the start
    of its first shard to the end of its last (summed over actors): how much of the time the pool held
    the model it spent running it. Below ~0.9 on a GPU, the device waits for the CPUs or storage.
    """
    totals: dict[str, Any] = {p: round(sum(float(u.get(p, 0.0)) for u in units), 3) for p in PHASES}
    totals.update({t: sum(int(u.get(t, 0)) for u in units) for t in TOKENS})
    # Model work spent on padding: 1.0 would be none (unpadded attention); length-sorted batches stay near it.
    totals["padding_overhead"] = round(totals["tokens_computed"] / totals["tokens"], 3) if totals["tokens"] else None
    spans: dict[str, tuple[float, float]] = {}
    for u in units:
        first, last = spans.get(u["actor"], (u["started_at"], u["finished_at"]))
        spans[u["actor"]] = (min(first, u["started_at"]), max(last, u["finished_at"]))
    actor_s = sum(last - first for first, last in spans.values())
    totals["actor_s"] = round(actor_s, 3)
    totals["actors"] = len(spans)
    totals["model_busy"] = round(totals["model_s"] / actor_s, 3) if actor_s > 0 else None
    return totals


def phase_line(phases: dict[str, Any]) -> str:
    """The summary's line: where the actors' time went and how busy the model was."""
    busy = "n/a" if phases.get("model_busy") is None else f"{phases['model_busy']:.2f}"
    padding = "" if phases.get("padding_overhead") is None else f"; {phases['padding_overhead']:.2f}x tokens computed"
    return (f"  phases         read {phases['read_s']:.1f} s, validate {phases['validate_s']:.1f} s, tokenize "
            f"{phases['tokenize_s']:.1f} s, model {phases['model_s']:.1f} s, write {phases['write_s']:.1f} s "
            f"(summed over shards); model busy {busy} of {phases['actor_s']:.1f} actor-s{padding}")
