"""What the sharded jobs share beyond OUTPUT's state: resuming committed units, running the rest on a
Ray Data actor pool, and publishing the errors each unit staged.

A unit travels as one JSON string in a one-column dataset (`shard`), one unit per batch, so an actor
that loads a model once handles whole units and commits each one itself (rayrank.jobs._output).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from rayrank.config import ClusterConfig
from rayrank.jobs._output import JobOutput


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


def as_columns(stats: list[dict[str, Any]]) -> dict[str, list]:
    """An actor's per-unit stats as the batch of columns Ray Data expects back."""
    return {key: [s[key] for s in stats] for key in stats[0]}


def publish_errors(out: JobOutput, unit_ids: list[str]) -> None:
    """Move each unit's staged errors (`_staging/errors/ID.parquet`) to `_errors/invalid-ID.parquet`."""
    for uid in sorted(unit_ids):
        staged = out.stage("errors", f"{uid}.parquet")
        if out.fs.exists(staged):
            out.fs.makedirs(out.path("_errors"), exist_ok=True)
            out.fs.mv(staged, out.path("_errors", f"invalid-{uid}.parquet"))
