"""Connecting to Ray: reuse a running session, join a cluster, or start an embedded local one."""

from __future__ import annotations

import logging

import ray


def connect(address: str | None) -> None:
    """`None` starts a local Ray for this process; `auto` or `ray://...`/`host:port` joins a cluster."""
    if ray.is_initialized():
        return
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=address is not None)


def quiet_worker() -> None:
    """Silence per-actor download/progress bars that would interleave with the job's own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
