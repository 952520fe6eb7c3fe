"""The one path every sharded job runs through: claim OUTPUT, resume committed units, run the rest on a Ray
Data actor pool, publish the errors each unit staged, and write the manifest last.

A job supplies what it does to one unit (a `UnitActor` subclass's `work`) and what its manifest says.
A unit travels as one JSON string in a one-column dataset (`shard`), one unit per batch, so an actor
that loads a model once handles whole units and commits each one itself (rayrank.jobs._output).
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

import rayrank
from rayrank.config import ClusterConfig, EngineConfig
from rayrank.io.storage import filesystem, list_parquet, retrying, storage_options
from rayrank.io.tables import KEYS, plan_shards, read_footers
from rayrank.jobs._output import JobOutput, job_identity
from rayrank.jobs._phases import ModelGate, Phases, split_cpus


@dataclass
class Claim:
    """OUTPUT claimed for a job: its id, the state stored by its first run, and when this run claimed it (the
    manifest's elapsed_s counts from there)."""

    out: JobOutput
    job_id: str
    state: dict[str, Any]
    started: float
    finished: dict[str, Any] | None  # the manifest, when OUTPUT already holds this job's finished results


def claim(job: str, output: str, out_options: dict, identity: dict[str, Any], state: dict[str, Any],
          overwrite: bool) -> Claim:
    """Claim OUTPUT for the job `identity` names (resuming its staging); says so when it is already done."""
    started = time.perf_counter()
    out = JobOutput(*filesystem(output, out_options))
    job_id = job_identity(identity)
    stored = out.prepare(job_id, {**state, "started": datetime.now(timezone.utc).isoformat()}, overwrite)
    finished = out.manifest()
    if finished is not None:
        out.cleanup()
        print(f"[{job}] {output} already holds this job's finished results; nothing to do.", file=sys.stderr)
    return Claim(out, job_id, stored, started, finished)


def finish(claim_: Claim, config: Any, manifest: dict[str, Any], **timings: Any) -> dict[str, Any]:
    """Write the manifest, the job's commit point: `manifest` plus what every job's says."""
    manifest = {"job_id": claim_.job_id, "rayrank_version": rayrank.__version__, **manifest,
                "timings": {"started": claim_.state["started"], "finished": datetime.now(timezone.utc).isoformat(),
                            "elapsed_s": round(time.perf_counter() - claim_.started, 3), **timings},
                "config": config.model_dump(exclude={"storage"})}
    claim_.out.finish(manifest)
    return manifest


def actor_config(config: Any) -> dict[str, Any]:
    """A job config as its actors receive it: only the keys that were set, so a default that depends on the
    model (a decoder reranker's token budget, rayrank.scoring.decoder) is still unset when the actor loads it."""
    return config.model_dump(exclude_unset=True)


def model_record(resolved) -> dict[str, str]:
    return {"name": resolved.name, "source": resolved.source, "path": str(resolved.path)}


def shard_rows(rows: int, most: int, actors: int) -> int:
    """Rows per shard: at least 4 shards per actor keeps the pool busy and makes resume fine-grained;
    the job stores it, so that a rerun with other --actors still finds the shards it committed."""
    return min(most, max(1, math.ceil(rows / (4 * actors))))


@dataclass
class ParquetInput:
    """A job's Parquet INPUT (row groups) and the storage options of its input and OUTPUT."""

    in_options: dict[str, Any]
    out_options: dict[str, Any]
    files: list[str]
    sizes: list[tuple[str, int]]
    groups: dict[str, list[int]]
    layouts: dict[str, str]
    fs: Any

    @classmethod
    def open(cls, config: Any, keys: tuple[str, ...] = KEYS) -> ParquetInput:
        """`config.input`'s files and their footers, checked for `keys` (the job's required columns)."""
        in_options = storage_options(config.storage, config.input)
        fs, root = filesystem(config.input, in_options)
        files = list_parquet(fs, root)
        groups, layouts = read_footers(fs, files, config.columns, keys)
        return cls(in_options, storage_options(config.storage, config.output), files,
                   [(f, fs.size(f)) for f in files], groups, layouts, fs)

    @property
    def rows(self) -> int:
        return sum(sum(counts) for counts in self.groups.values())

    def shard_rows(self, most: int, actors: int) -> int:
        return shard_rows(self.rows, most, actors)

    def shards(self, shard_rows: int) -> dict[str, str]:
        """{shard id: the shard as a unit} in plan order."""
        return {s.shard_id: json.dumps(asdict(s)) for s in plan_shards(self.fs, self.groups, shard_rows)}


@dataclass
class Pass:
    """The planned units' markers (earlier runs' and this run's), rows reused, this run's markers and seconds."""

    done: dict[str, dict]
    reused: int
    this_run: list[dict]
    seconds: float


def run_units(claim_: Claim, job: str, units: dict[str, str], actor: type, cluster: ClusterConfig,
              kwargs: dict[str, Any], count_key: str = "rows_in", what: str = "rows") -> Pass:
    """Skip the units already committed, run the rest through `actor` on the pool, one progress line a unit.

    Call after connecting to Ray. `count_key` is what a unit's marker counts (and the progress line shows).
    """
    done, reused = resume(claim_.out, list(units), count_key, job, what)
    todo = [u for u in units if u not in done]
    started, now = time.perf_counter(), 0
    if todo:
        for row in map_units([units[u] for u in todo], actor, cluster, kwargs):
            done[row["shard"]] = row
            now += int(row[count_key])
            rate = now / max(time.perf_counter() - started, 1e-9)
            end = "" if sys.stderr.isatty() else "\n"  # redraw in place on a terminal, one line each in logs
            print(f"\r[{job}] shards {len(done)}/{len(units)}  {what} {reused + now:,}  {rate:,.1f} {what}/s",
                  end=end, file=sys.stderr, flush=True)
        if sys.stderr.isatty():
            print(file=sys.stderr)
    publish_errors(claim_.out, list(done))
    return Pass(done, reused, [done[u] for u in todo], time.perf_counter() - started)


def resume(out: JobOutput, planned: list[str], count_key: str, job: str, what: str) -> tuple[dict[str, dict], int]:
    """(markers of the planned units already committed, their summed `count_key`), said on stderr."""
    ids = set(planned)
    done = {k: v for k, v in out.committed("shards").items() if k in ids}
    reused = sum(int(d[count_key]) for d in done.values())
    if done:
        print(f"[{job}] resuming: {len(done)} of {len(planned)} shards already done; reusing {reused:,} {what}",
              file=sys.stderr)
    return done, reused


def map_units(units: list[str], actor: type, cluster: ClusterConfig, kwargs: dict[str, Any]) -> Iterator[dict]:
    """Run every unit through `actor` (built with `kwargs`) on an autoscaling pool; yields each unit's stats."""
    import ray

    from rayrank.jobs._ray import actor_pool

    pool = actor_pool(cluster, len(units))  # before the dataset, which copies the DataContext
    dataset = ray.data.from_items([{"shard": u} for u in units], override_num_blocks=len(units))
    # Ray Data restarts a lost actor and retries its unit; units are idempotent until committed.
    results = dataset.map_batches(actor, batch_size=1, compute=pool,
                                  num_cpus=cluster.cpus_per_actor, num_gpus=cluster.gpus_per_actor,
                                  fn_constructor_kwargs=kwargs)
    for row in results.iter_rows():
        yield {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


def publish_errors(out: JobOutput, unit_ids: list[str]) -> None:
    """Move each unit's staged errors (`_staging/errors/ID.parquet`) to `_errors/invalid-ID.parquet`."""
    for uid in sorted(unit_ids):
        staged = out.stage("errors", f"{uid}.parquet")
        if out.fs.exists(staged):
            out.fs.makedirs(out.path("_errors"), exist_ok=True)
            out.fs.mv(staged, out.path("_errors", f"invalid-{uid}.parquet"))


class UnitActor:
    """A Ray Data actor of a sharded job: `work(unit, phases)` does the job's part for one unit and returns its
    stats (with `shard`, its id); this times it, adds who ran it, and commits the unit's marker last, so a
    marker proves the unit's files whole.

    Ray Data calls it from several threads at once (`cluster.prefetch_shards`); with a model loaded by
    `load_engine`, the model gate lets one call use the model while the others read, validate, tokenize or write.
    """

    # An actor that loads no model skips silencing the Hugging Face loaders, which imports transformers.
    loads_model = True

    def __init__(self, output: str, out_options: dict[str, Any]) -> None:
        from rayrank.jobs._ray import actor_id, quiet_worker

        if self.loads_model:
            quiet_worker()
        self.out = JobOutput(*filesystem(output, out_options))
        self.actor = actor_id()
        self.gate: ModelGate | None = None
        self._frozen = False

    def load_engine(self, engine: EngineConfig, cluster: ClusterConfig) -> rayrank.Reranker:
        """The actor's model, behind the gate; the tokenizer gets the CPUs the model leaves (jobs/_phases.py)."""
        split_cpus(cluster.cpus_per_actor, engine.threads, cluster.prefetch_shards)
        reranker = rayrank.Reranker.from_config(engine)
        self.gate = ModelGate(reranker.scorer)
        return reranker

    def work(self, unit: dict[str, Any], phases: Phases) -> dict[str, Any]:
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        if not self._frozen:
            # What the actor loaded lives as long as it does: the collector need not walk it again after each
            # shard's ~40,000 new lists and encodings (measured: 7-15% of a tokenizer-heavy shard).
            gc.freeze()
            self._frozen = True
        stats = [self._unit(json.loads(s)) for s in batch["shard"]]
        return {key: [s[key] for s in stats] for key in stats[0]}

    def _unit(self, unit: dict[str, Any]) -> dict[str, Any]:
        phases, started, started_at = Phases(), time.perf_counter(), time.time()
        with self.gate.shard(phases) if self.gate else nullcontext():
            stats = self.work(unit, phases)
        stats.update(phases.as_stats(), seconds=time.perf_counter() - started, started_at=started_at,
                     finished_at=time.time(), actor=self.actor)
        uid = stats["shard"]
        retrying(f"committing shard {uid}", lambda: self.out.commit_unit("shards", uid, stats))
        release_freed_heap()
        return stats


def release_freed_heap() -> bool:
    """Hand the heap's free pages back to the system (glibc's `malloc_trim`); False where libc is not glibc.

    A unit frees its table, tokens and scores, but glibc keeps what its arenas freed, so over a night an
    actor's resident memory crept up by that kept heap while the memory in use stayed level (measured in
    docs/benchmarks/jobs.md).
    """
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True
