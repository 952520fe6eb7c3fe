"""Connecting to Ray: reuse a running session, join a cluster, or start an embedded local one."""

from __future__ import annotations

import logging
import sys

import ray


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
