"""Connecting to Ray: reuse a running session, join a cluster, or start an embedded local one."""

from __future__ import annotations

import logging
import sys

import ray

from rayrank.config import ClusterConfig


def connect(address: str | None) -> None:
    """`None` starts a local Ray for this process; `auto` or `ray://...`/`host:port` joins a cluster."""
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=address is not None)
    # Off a terminal (CI, log files) Ray Data logs a progress table every few seconds; the job
    # prints its own one-line progress there, and Ray Data's bars stay on a terminal.
    ray.data.DataContext.get_current().enable_progress_bars = sys.stdout.isatty()


def quiet_worker() -> None:
    """Silence per-actor download/progress bars that would interleave with the job's own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def alive_nodes() -> set[str]:
    """Ids of the nodes alive now; compared before and after a job to report nodes lost mid-job."""
    return {node["NodeID"] for node in ray.nodes() if node["Alive"]}


def node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def actor_id() -> str:
    return ray.get_runtime_context().get_actor_id() or "driver"


def actor_pool(cluster: ClusterConfig, shards: int) -> ray.data.ActorPoolStrategy:
    """MIN..MAX actors (never more than there are shards), started before the first shard is handed out.

    Ray Data's default hands shards to the first actor that is ready, so on a slow node one actor can
    drain a short job (or a resumed job's last shards) before the others have loaded the model.
    GPU pools start at MAX: Ray Data does not scale a GPU actor pool up on an autoscaling cluster
    (ray-project/ray#59144), so MIN < MAX would run at MIN all night.
    Each actor runs `prefetch_shards + 1` shard calls at once (threads; see jobs/_phases.py) and holds
    one more shard, which starts the moment a call ends: handed out only then, it waited for Ray Data's
    scheduler (measured: 0.15-0.2 s per shard, about 10% of a tokenizer-heavy 10,000-row shard). More
    would leave shards queued behind a busy actor while another is idle. Ray Data adds an actor when
    its pool's tasks in flight reach 175% of what the actors run at once by default, more than these
    settings allow (150% at the default prefetch): the threshold is set halfway, so a pool grows once
    half its actors hold a waiting shard. Call it before creating the dataset: a dataset keeps a copy
    of the DataContext it was created under.
    """
    high = max(1, min(cluster.actors[1], shards))
    low = high if cluster.gpus_per_actor > 0 else min(cluster.actors[0], high)
    calls = cluster.prefetch_shards + 1
    context = ray.data.DataContext.get_current()
    context.wait_for_min_actors_s = cluster.wait_for_actors_s
    context.autoscaling_config.actor_pool_util_upscaling_threshold = 1 + 0.5 / calls
    return ray.data.ActorPoolStrategy(min_size=low, max_size=high, max_tasks_in_flight_per_actor=calls + 1,
                                      max_concurrent_calls_per_actor=calls, enable_true_multi_threading=True)
