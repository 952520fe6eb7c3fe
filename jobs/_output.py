"""The state of a job's OUTPUT directory: staging, per-unit commit markers, refusal, final manifest.

Layout while running: `OUTPUT/_staging/` holds `job.json` (identity), work files, and one marker
per committed unit under `done/`; a unit's files are written before its marker, so a marker proves
its files are whole. Published files appear in OUTPUT by rename. `_manifest.json` is written last:
its presence means the job finished.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fsspec import AbstractFileSystem

from rayrank.errors import OutputConflictError
from rayrank.io.storage import join, read_json, write_json_atomic


def job_identity(parts: dict[str, Any]) -> str:
    """A stable id for 'the same job': same inputs (paths and sizes) and same result-shaping settings."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def steady_rate(units: list[dict[str, Any]], key: str = "rows_in") -> float | None:
    """Rows/s from the first unit's start to the last unit's end (`started_at`/`finished_at`): the
    pool's rate once actors have started and loaded the model (what a long job runs at)."""
    if not units:
        return None
    span = max(u["finished_at"] for u in units) - min(u["started_at"] for u in units)
    return round(sum(int(u[key]) for u in units) / max(span, 1e-9), 2)


class JobOutput:
    def __init__(self, fs: AbstractFileSystem, root: str) -> None:
        self.fs, self.root = fs, root.rstrip("/")
        self.staging = join(self.root, "_staging")
        self.manifest_path = join(self.root, "_manifest.json")

    def path(self, *parts: str) -> str:
        return join(self.root, *parts)

    def stage(self, *parts: str) -> str:
        return join(self.staging, *parts)

    def manifest(self) -> dict[str, Any] | None:
        return read_json(self.fs, self.manifest_path)

    def prepare(self, job_id: str, state: dict[str, Any], overwrite: bool) -> dict[str, Any]:
        """Claim OUTPUT for `job_id`, resuming its staging if present; returns the stored job state.

        Raises OutputConflictError when OUTPUT holds another job's results or foreign files.
        """
        fs = self.fs
        if overwrite and fs.exists(self.root):
            fs.rm(self.root, recursive=True)
        existing = (self.manifest() or {}).get("job_id") or (read_json(fs, self.stage("job.json")) or {}).get("job_id")
        if existing is not None and existing != job_id:
            raise OutputConflictError(
                f"{self.root} holds results of a different job ({existing}; this job is {job_id}: other inputs, "
                "model or settings). Choose another OUTPUT or pass --overwrite to replace it.")
        if existing is None and fs.exists(self.root) and fs.ls(self.root):
            raise OutputConflictError(f"{self.root} is not empty and was not written by rayrank; "
                                      "choose another OUTPUT or pass --overwrite.")
        stored = read_json(fs, self.stage("job.json"))
        if stored is None:
            stored = {"job_id": job_id, **state}
            if self.manifest() is None:
                write_json_atomic(stored, fs, self.stage("job.json"))
        return stored

    def committed(self, kind: str) -> dict[str, dict[str, Any]]:
        """Markers of committed units of `kind` (e.g. shards, buckets), keyed by unit id."""
        folder = self.stage("done", kind)
        if not self.fs.exists(folder):
            return {}
        markers = {}
        for path in self.fs.ls(folder, detail=False):
            name = path.rsplit("/", 1)[-1]
            if name.endswith(".json") and not name.startswith("."):
                markers[name[:-5]] = read_json(self.fs, path)
        return markers

    def commit_unit(self, kind: str, unit: str, stats: dict[str, Any]) -> None:
        write_json_atomic(stats, self.fs, self.stage("done", kind, f"{unit}.json"))

    def finish(self, manifest: dict[str, Any]) -> None:
        """Write the manifest (the job's commit point), then drop staging and stray temporary files."""
        write_json_atomic(manifest, self.fs, self.manifest_path)
        self.cleanup()

    def cleanup(self) -> None:
        if self.fs.exists(self.staging):
            self.fs.rm(self.staging, recursive=True)
        for path in self.fs.find(self.root):
            if path.rsplit("/", 1)[-1].startswith(".") and ".tmp-" in path:
                self.fs.rm(path)
