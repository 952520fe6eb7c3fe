"""A score cache across runs: (model setting, query text, document text) → score, on local disk or s3://.

Nightly reranking scores mostly the pairs it scored the night before; a pair scored by the same
weights with the same settings need not be scored again. (`rayrank.cache` is another thing: the
Serve deployment's in-memory cache of near-duplicate queries.)

Layout::

    DIR/<fingerprint>/                        one model setting; no other setting ever reads it
        fingerprint.json                      what the fingerprint hashes, for people
        b=<hh>/<ms>-<rand>-<sha>.parquet      immutable segments of key bucket hh (00..3f)

Key: `engine_fingerprint` hashes every setting that changes a score (weights, scorer, backend, dtype,
quantize, lengths, long-document settings, instruction, prompt template, the device kind, the
rayrank version); a pair's key is blake2b-128 of its query and document text, stored as two uint64
columns (`k0`, `k1`) beside `score` (float32) and `written_at`. The key's top 6 bits pick its bucket,
so a lookup reads only the buckets its keys fall in, one at a time, and keeps at most
`max_memory_bytes` of decoded buckets (least recently used go first). Keys are uniform, so a shard
of thousands of pairs touches every bucket: an actor reads its setting's cache once a run when it
fits `max_memory_bytes` (28 bytes an entry; about 20 on disk), and again at each lookup otherwise,
so size that to the pruned cache. Each lookup lists the buckets it touches, which is how an actor
sees what other actors published earlier in the same run.

Corruption: a segment is published whole (a rename on disk, one PUT on S3) under a name holding
the first 16 hex digits of its bytes' sha256. A reader recomputes it; a mismatch, an unreadable file,
another schema or another fingerprint in the file's metadata makes the segment skipped (counted in
`corrupt`), so its pairs are misses: scored again and written again, never trusted. A writer killed
mid-write leaves at most a `.NAME.tmp-*` file, which no reader opens.

Retention: `prune(DIR, max_age_days=..., max_bytes=...)` (run it after a job, e.g. nightly) rewrites
each bucket of each fingerprint as one segment (compaction: many small segments into one, newest
score of a key kept), dropping entries written more than `max_age_days` ago; then, while the cache
holds more than `max_bytes`, drops the oldest hour of entries across all fingerprints (an old
model's entries age out first, since nothing refreshes them). It deletes corrupt segments,
temporary files older than an hour and fingerprints left empty. A segment a job publishes while
`prune` runs is kept as it is; a reader that meets a duplicate (a compacted segment beside the
segments it replaces, for a moment) keeps one. Sizes are what the store reports, so `max_bytes`
bounds DIR as `du` would.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import rayrank
from rayrank.errors import InvalidInputError
from rayrank.io.storage import filesystem, is_object_store, join, put_atomic, read_json, retrying, write_json_atomic

FORMAT = 1
BUCKET_BITS = 6
BUCKETS = 1 << BUCKET_BITS
SCHEMA = pa.schema([("k0", pa.uint64()), ("k1", pa.uint64()), ("score", pa.float32()),
                    ("written_at", pa.timestamp("ms", tz="UTC"))])
SEGMENT = re.compile(r"^(\d{13})-[0-9a-f]{8}-([0-9a-f]{16})\.parquet$")
TEMPORARY = re.compile(r"^\.(\d{13})-[0-9a-f]{8}-[0-9a-f]{16}\.parquet\.tmp-")
FINGERPRINT = re.compile(r"^[0-9a-f]{32}$")
TEMPORARY_GRACE_S = 3600
# EngineConfig fields that change how fast scores come, not what they are: left out of the fingerprint.
# Every other field counts, including ones added later: a new setting splits the cache (a miss), never
# shares it (a wrong hit).
NOT_SCORE_SETTINGS = frozenset({"device", "threads", "cache_dir", "max_tokens_per_batch", "max_batch_size",
                                "batch_overhead_tokens", "trust_remote_code"})


def fingerprint_settings(engine: Any, weights: str, *, device: str, extra: Mapping[str, Any] | None = None
                         ) -> dict[str, Any]:
    """What `engine_fingerprint` hashes, as a JSON-able mapping (written to `fingerprint.json`).

    Args:
        engine: an `EngineConfig` (or its `model_dump()`), with `backend: auto` already resolved
            (`rayrank.reranker.resolve_engine`), so every actor names the backend that scored.
        weights: the checkpoint's identity: `weights_digest(path)` (the same on every node) or
            `rayrank.backends.onnx_backend.weights_fingerprint(path)` (mtimes: differs per download).
        device: "cpu" or "cuda", where the scores come from: `dtype: auto` means bf16 for a decoder on
            CUDA and fp32 on CPU.
        extra: anything else that changes a score and is not in the engine config, e.g. the index
            (and its compression) a late-interaction job reads document embeddings from.
    """
    record = engine.model_dump(mode="json") if hasattr(engine, "model_dump") else dict(engine)
    # The model is `weights`, by content: the same checkpoint at another path or under another name
    # shares its scores; its name or path is not hashed.
    settings = {k: v for k, v in sorted(record.items()) if k not in NOT_SCORE_SETTINGS and k != "model"}
    return {"format": FORMAT, "rayrank": rayrank.__version__, "weights": weights,
            "device": device.split(":")[0], "engine": settings, "extra": dict(extra or {})}


def engine_fingerprint(engine: Any, weights: str, *, device: str, extra: Mapping[str, Any] | None = None) -> str:
    """32 hex digits naming one model setting's directory in the cache (see `fingerprint_settings`).

    Compute it once on the driver and hand it to the actors, as the job does with `backend: auto`.

    Example:
        >>> from rayrank.config import EngineConfig
        >>> a = engine_fingerprint(EngineConfig(), "w1", device="cpu")
        >>> a == engine_fingerprint(EngineConfig(threads=4), "w1", device="cpu")
        True
        >>> a == engine_fingerprint(EngineConfig(max_length=256), "w1", device="cpu")
        False
    """
    text = json.dumps(fingerprint_settings(engine, weights, device=device, extra=extra), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def weights_digest(model_dir: str | Path) -> str:
    """Content identity of a checkpoint directory: the same on every machine holding the same files.

    Files are hashed by content; a Hugging Face cache's snapshot links point at blobs named by their
    hash, so those cost a readlink. Dot-files and *.md are left out.
    """
    root = Path(model_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or path.suffix == ".md":
            continue
        digest.update(rel.as_posix().encode() + b"\0")
        target = Path(os.readlink(path)) if path.is_symlink() else None
        if target is not None and target.parent.name == "blobs":
            digest.update(target.name.encode())
        else:
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def pair_keys(queries: Sequence[str], documents: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(k0, k1) uint64 arrays: blake2b-128 of each (query, document), the query's length first so that
    ("ab", "c") and ("a", "bc") differ."""
    if len(queries) != len(documents):
        raise InvalidInputError(f"pair_keys: {len(queries)} queries but {len(documents)} documents; "
                                "pass one query per document")
    prefixes: dict[str, Any] = {}
    raw = bytearray()
    for query, document in zip(queries, documents):
        prefix = prefixes.get(query)
        if prefix is None:
            encoded = query.encode("utf-8", "surrogatepass")
            prefix = hashlib.blake2b(len(encoded).to_bytes(8, "little") + encoded, digest_size=16,
                                     person=b"rayrank.pair.v1")
            prefixes[query] = prefix
        pair = prefix.copy()
        pair.update(document.encode("utf-8", "surrogatepass"))
        raw += pair.digest()
    both = np.frombuffer(bytes(raw), dtype="<u8").reshape(-1, 2)
    return both[:, 0].copy(), both[:, 1].copy()


def bucket_of_keys(k0: np.ndarray) -> np.ndarray:
    return (k0 >> np.uint64(64 - BUCKET_BITS)).astype(np.int64)


def _newest_first_unique(k0: np.ndarray, k1: np.ndarray, written: np.ndarray) -> np.ndarray:
    """Indices of one row per (k0, k1), the newest, in key order."""
    order = np.lexsort((-written, k1, k0))
    first = np.ones(len(order), dtype=bool)
    first[1:] = (k0[order][1:] != k0[order][:-1]) | (k1[order][1:] != k1[order][:-1])
    return order[first]


@dataclass
class _Entries:
    """A bucket's entries, one per key, sorted by (k0, k1)."""

    k0: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    k1: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    score: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    written: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    @property
    def nbytes(self) -> int:
        return 28 * len(self.k0)

    def merged(self, *others: _Entries) -> _Entries:
        """One entry per key of self and `others` (the newest), sorted.

        A stable sort of k0 merges already sorted parts in about linear time (timsort finds the runs);
        only keys sharing a k0 (a key in two parts, or a rare k0 collision) are settled by a full sort.
        """
        parts = [p for p in (self, *others) if len(p.k0)]
        if len(parts) <= 1 and (not parts or parts[0] is self):
            return self
        k0, k1 = np.concatenate([p.k0 for p in parts]), np.concatenate([p.k1 for p in parts])
        score, written = np.concatenate([p.score for p in parts]), np.concatenate([p.written for p in parts])
        order = np.argsort(k0, kind="stable")
        shared = np.zeros(len(order), dtype=bool)
        equal = k0[order][1:] == k0[order][:-1]
        shared[1:] |= equal
        shared[:-1] |= equal
        keep = order
        if shared.any():
            sub = order[shared]
            sub = sub[_newest_first_unique(k0[sub], k1[sub], written[sub])]
            keep = np.concatenate([order[~shared], sub])
            keep = keep[np.argsort(k0[keep], kind="stable")]
        return _Entries(k0[keep], k1[keep], score[keep], written[keep])

    def since(self, cutoff_ms: int) -> _Entries:
        keep = self.written >= cutoff_ms
        return _Entries(self.k0[keep], self.k1[keep], self.score[keep], self.written[keep])

    def find(self, k0: np.ndarray, k1: np.ndarray) -> np.ndarray:
        """Row of each (k0, k1) here, -1 where absent."""
        at = np.searchsorted(self.k0, k0)
        rows = np.full(len(k0), -1, dtype=np.int64)
        if not len(self.k0):
            return rows
        safe = np.minimum(at, len(self.k0) - 1)
        hit = (self.k0[safe] == k0) & (self.k1[safe] == k1)
        rows[hit] = safe[hit]
        # Two keys sharing k0 (odds ~1e-6 per million entries) sit side by side: look along the run.
        if len(self.k0) > 1 and np.any(self.k0[1:] == self.k0[:-1]):
            for i in np.flatnonzero(~hit & (self.k0[safe] == k0)):
                j = int(at[i])
                while j < len(self.k0) and self.k0[j] == k0[i]:
                    if self.k1[j] == k1[i]:
                        rows[i] = j
                        break
                    j += 1
        return rows

    def table(self, fingerprint: str) -> pa.Table:
        schema = SCHEMA.with_metadata({"rayrank.fingerprint": fingerprint, "rayrank.format": str(FORMAT)})
        return pa.table([pa.array(self.k0, pa.uint64()), pa.array(self.k1, pa.uint64()),
                         pa.array(self.score, pa.float32()), pa.array(self.written, pa.int64()).cast(SCHEMA[3].type)],
                        schema=schema)


def _segment_bytes(entries: _Entries, fingerprint: str) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(entries.table(fingerprint), buffer, compression="zstd")
    return buffer.getvalue()


def _segment_name(data: bytes, now_ms: int) -> str:
    return f"{now_ms:013d}-{uuid.uuid4().hex[:8]}-{hashlib.sha256(data).hexdigest()[:16]}.parquet"


def _read_segment(data: bytes, name: str, fingerprint: str) -> _Entries | None:
    """The segment's entries, or None when its bytes do not match its name's checksum, it is not a Parquet
    file of the cache's schema, or it belongs to another fingerprint."""
    match = SEGMENT.match(name)
    if match is None or hashlib.sha256(data).hexdigest()[:16] != match.group(2):
        return None
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError):  # not Parquet, or a damaged one
        return None
    meta = table.schema.metadata or {}
    if meta.get(b"rayrank.fingerprint") != fingerprint.encode() or not table.schema.remove_metadata().equals(SCHEMA):
        return None
    return _Entries(table["k0"].to_numpy(), table["k1"].to_numpy(), table["score"].to_numpy(),
                    table["written_at"].cast(pa.int64()).to_numpy())


def _listing(fs: Any, path: str) -> list[dict[str, Any]]:
    """Entries under `path` as the store has them now (s3fs caches listings); none when it does not exist."""
    fs.invalidate_cache(path)
    try:
        return retrying(f"listing {path}", lambda: fs.ls(path, detail=True))
    except FileNotFoundError:
        return []


def _name(entry: dict[str, Any]) -> str:
    return entry["name"].rstrip("/").rsplit("/", 1)[-1]


@dataclass
class _Bucket:
    entries: _Entries
    seen: set[str]  # segment names read (or found corrupt) already


@dataclass
class CachedPairs:
    """A batch of pairs after a lookup: what the cache answered and which pairs remain to score.

    `todo` holds the first pair of each key the cache lacks, so a pair repeated in the batch is
    scored once; `complete(scores_of_todo)` gives every pair's score.
    """

    k0: np.ndarray
    k1: np.ndarray
    scores: np.ndarray  # float32, meaningful where `found`
    found: np.ndarray  # bool: answered by the cache
    todo: np.ndarray  # int64 row indices to score
    _representative: np.ndarray  # per row not found: its position in `todo`

    @property
    def hits(self) -> int:
        """Pairs answered by the cache."""
        return int(self.found.sum())

    @property
    def repeats(self) -> int:
        """Pairs the cache lacked that another pair of the batch (same texts) answers."""
        return len(self.found) - self.hits - len(self.todo)

    def complete(self, todo_scores: Sequence[float] | np.ndarray) -> np.ndarray:
        todo_scores = np.asarray(todo_scores, dtype=np.float32)
        if len(todo_scores) != len(self.todo):
            raise InvalidInputError(f"complete: got {len(todo_scores)} scores for {len(self.todo)} pairs to score; "
                                    "pass the scores of exactly the pairs in `todo`, in its order")
        scores = self.scores.copy()
        scores[~self.found] = todo_scores[self._representative]
        return scores


class ScoreCache:
    """One model setting's scores under DIR (local or s3://), for the actors that look pairs up and add
    the new ones. See the module docstring for the layout and guarantees.

    Args:
        root: the cache directory DIR.
        fingerprint: `engine_fingerprint(...)` of the setting that scores.
        storage_options: s3fs options (`rayrank.io.storage.storage_options`).
        settings: `fingerprint_settings(...)`, written once to `fingerprint.json` for people.
        max_memory_bytes: decoded buckets kept between lookups (28 bytes an entry).

    Example:
        >>> import tempfile
        >>> cache = ScoreCache(tempfile.mkdtemp(), "0" * 32)
        >>> pairs = cache.lookup(["q", "q"], ["d", "d"])
        >>> pairs.hits, pairs.todo.tolist()
        (0, [0])
        >>> cache.add(pairs, [0.5]).tolist()
        [0.5, 0.5]
        >>> cache.lookup(["q"], ["d"]).scores.tolist()
        [0.5]
    """

    def __init__(self, root: str, fingerprint: str, *, storage_options: dict[str, Any] | None = None,
                 settings: dict[str, Any] | None = None, max_memory_bytes: int = 256 << 20,
                 clock: Callable[[], float] = time.time) -> None:
        if not FINGERPRINT.match(fingerprint):
            raise InvalidInputError(f"fingerprint must be 32 hex digits from engine_fingerprint(), got {fingerprint!r}")
        self.fs, base = filesystem(root, storage_options)
        self.root, self.fingerprint = join(base, fingerprint), fingerprint
        self.settings, self.max_memory_bytes, self.clock = settings, max_memory_bytes, clock
        self.corrupt: list[str] = []  # paths of segments skipped as corrupt
        self.written = 0  # entries this instance added
        self._buckets: OrderedDict[int, _Bucket] = OrderedDict()
        self._described = False

    def lookup(self, queries: Sequence[str], documents: Sequence[str]) -> CachedPairs:
        """Look every (query, document) pair up; segments published since the last lookup are read too."""
        k0, k1 = pair_keys(queries, documents)
        scores = np.zeros(len(k0), dtype=np.float32)
        found = np.zeros(len(k0), dtype=bool)
        buckets = bucket_of_keys(k0)
        for bucket in np.unique(buckets):
            rows = np.flatnonzero(buckets == bucket)
            entries = self._refresh(int(bucket))
            at = entries.find(k0[rows], k1[rows])
            hit = at >= 0
            scores[rows[hit]] = entries.score[at[hit]]
            found[rows[hit]] = True
            self._evict(keep=int(bucket))
        missing = np.flatnonzero(~found)
        # Rows the cache lacks, grouped by key (lexsort is stable: a group's first row is its first in the batch).
        order = np.lexsort((k1[missing], k0[missing]))
        starts = np.ones(len(order), dtype=bool)
        starts[1:] = (np.diff(k0[missing][order]) != 0) | (np.diff(k1[missing][order]) != 0)
        firsts = missing[order[starts]]
        by_row = np.argsort(firsts)
        todo = firsts[by_row]
        position = np.empty(len(todo), dtype=np.int64)
        position[by_row] = np.arange(len(todo))
        representative = np.empty(len(missing), dtype=np.int64)
        representative[order] = position[np.cumsum(starts) - 1]
        return CachedPairs(k0, k1, scores, found, todo, representative)

    def add(self, pairs: CachedPairs, todo_scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """Publish the scores of `pairs.todo` (one segment per bucket touched) and return every pair's score."""
        complete = pairs.complete(todo_scores)
        if not len(pairs.todo):
            return complete
        self._describe()
        now_ms = int(self.clock() * 1000)
        k0, k1 = pairs.k0[pairs.todo], pairs.k1[pairs.todo]
        new = _Entries(k0, k1, complete[pairs.todo], np.full(len(k0), now_ms, np.int64))
        buckets = bucket_of_keys(k0)
        for bucket in np.unique(buckets):
            rows = np.flatnonzero(buckets == bucket)
            part = _Entries().merged(_Entries(new.k0[rows], new.k1[rows], new.score[rows], new.written[rows]))
            data = _segment_bytes(part, self.fingerprint)
            name = _segment_name(data, now_ms)
            path = join(self._bucket_dir(int(bucket)), name)
            retrying(f"writing score cache segment {path}", lambda data=data, path=path: put_atomic(data, self.fs, path))
            if (loaded := self._buckets.get(int(bucket))) is not None:
                loaded.entries = loaded.entries.merged(part)
                loaded.seen.add(name)
            self.written += len(part.k0)
        self._evict(keep=-1)
        return complete

    def score(self, queries: Sequence[str], documents: Sequence[str],
              score: Callable[[list[str], list[str]], Sequence[float] | np.ndarray]) -> tuple[np.ndarray, CachedPairs]:
        """Every pair's score, calling `score(queries, documents)` only on the pairs to score; adds them."""
        pairs = self.lookup(queries, documents)
        todo = pairs.todo.tolist()
        new = score([queries[i] for i in todo], [documents[i] for i in todo]) if todo else []
        return self.add(pairs, new), pairs

    def _bucket_dir(self, bucket: int) -> str:
        return join(self.root, f"b={bucket:02x}")

    def _describe(self) -> None:
        if self._described or self.settings is None:
            return
        path = join(self.root, "fingerprint.json")
        if retrying(f"reading {path}", lambda: read_json(self.fs, path)) is None:
            retrying(f"writing {path}", lambda: write_json_atomic(self.settings, self.fs, path))
        self._described = True

    def _refresh(self, bucket: int) -> _Entries:
        """The bucket's entries, after reading the segments not read yet."""
        loaded = self._buckets.pop(bucket, None) or _Bucket(_Entries(), set())
        self._buckets[bucket] = loaded  # most recently used last
        new = []
        for entry in _listing(self.fs, self._bucket_dir(bucket)):
            name = _name(entry)
            if name in loaded.seen or not SEGMENT.match(name):
                continue  # read already, or a temporary file of a writer (alive or killed)
            loaded.seen.add(name)
            try:
                data = retrying(f"reading {entry['name']}", lambda path=entry["name"]: self.fs.cat_file(path))
            except FileNotFoundError:
                continue  # compacted away since the listing: its entries are in the compacted segment
            entries = _read_segment(data, name, self.fingerprint)
            if entries is None:
                self.corrupt.append(entry["name"])
                continue
            new.append(entries)
        loaded.entries = loaded.entries.merged(*new)
        return loaded.entries

    def _evict(self, keep: int) -> None:
        total = sum(b.entries.nbytes for b in self._buckets.values())
        for bucket in list(self._buckets):
            if total <= self.max_memory_bytes:
                break
            if bucket != keep:
                total -= self._buckets.pop(bucket).entries.nbytes


@dataclass
class PruneReport:
    """What `prune` did: entries kept and dropped, files deleted, bytes before and after."""

    entries_kept: int = 0
    entries_dropped: int = 0
    segments_compacted: int = 0
    corrupt_removed: int = 0
    temporaries_removed: int = 0
    fingerprints_removed: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


@dataclass
class _Compacted:
    path: str  # the bucket's one segment ("" when the bucket is empty)
    bytes: int
    hours: dict[int, int]  # hour since the epoch -> entries written in it


def prune(root: str, *, max_age_days: float | None = None, max_bytes: int | None = None,
          storage_options: dict[str, Any] | None = None, now: float | None = None) -> PruneReport:
    """Compact every bucket of every fingerprint under DIR and apply retention (see the module docstring).

    Args:
        root: the cache directory DIR (local or s3://); only 32-hex-digit subfolders are touched.
        max_age_days: entries written longer ago are dropped.
        max_bytes: then the oldest hours of entries are dropped until DIR holds at most this many bytes.
        now: seconds since the epoch (tests).
    """
    if max_age_days is not None and max_age_days < 0:
        raise InvalidInputError(f"max_age_days must be >= 0, got {max_age_days}")
    if max_bytes is not None and max_bytes < 0:
        raise InvalidInputError(f"max_bytes must be >= 0, got {max_bytes}")
    fs, base = filesystem(root, storage_options)
    now_ms = int((time.time() if now is None else now) * 1000)
    cutoff = -(1 << 62) if max_age_days is None else now_ms - int(max_age_days * 86_400_000)
    report = PruneReport()
    fingerprints = [e["name"] for e in _listing(fs, base) if e["type"] == "directory" and FINGERPRINT.match(_name(e))]
    report.bytes_before = _total(fs, fingerprints)
    compacted: dict[tuple[str, str], _Compacted] = {}
    for fp_dir in fingerprints:
        for bucket_dir in [e["name"] for e in _listing(fs, fp_dir) if e["type"] == "directory"]:
            compacted[(fp_dir, bucket_dir)] = _compact(fs, fp_dir, bucket_dir, cutoff, now_ms, report, True)
    while max_bytes is not None and _total(fs, fingerprints) > max_bytes:
        hours: dict[int, float] = {}  # bytes per hour, each segment's bytes spread over its entries
        for part in compacted.values():
            rows = sum(part.hours.values())
            for hour, count in part.hours.items():
                hours[hour] = hours.get(hour, 0.0) + part.bytes * count / rows
        if not hours:
            break
        kept, cut_hour = 0.0, min(hours) + 1  # drop at least the oldest hour: every pass makes progress
        for hour in sorted(hours, reverse=True):
            kept += hours[hour]
            if kept > max_bytes:
                cut_hour = max(hour + 1, cut_hour)
                break
        cutoff = cut_hour * 3_600_000
        for (fp_dir, bucket_dir), part in list(compacted.items()):
            if part.hours and min(part.hours) < cut_hour:
                compacted[(fp_dir, bucket_dir)] = _compact(fs, fp_dir, bucket_dir, cutoff, now_ms, report, False)
    for fp_dir in fingerprints:
        if not any(p.path for (f, _), p in compacted.items() if f == fp_dir):
            _remove_empty(fs, fp_dir, [b for f, b in compacted if f == fp_dir])
            report.fingerprints_removed += 1
    report.bytes_after = _total(fs, fingerprints)
    return report


def _remove_empty(fs: Any, fp_dir: str, bucket_dirs: list[str]) -> None:
    """Remove a fingerprint left without entries: its files as listed, then its folders if empty. Not `rm -r`:
    a segment a job publishes meanwhile (a new model's first night) is kept."""
    files = [e["name"] for e in _listing(fs, fp_dir) if e["type"] != "directory"]
    if files:
        retrying(f"deleting {len(files)} file(s) in {fp_dir}", lambda: fs.rm(files))
    if not is_object_store(fs):  # an object store has no folders: they go with their last object
        for folder in [*bucket_dirs, fp_dir]:
            try:
                fs.rmdir(folder)
            except OSError:
                pass  # not empty: something was published meanwhile


def _total(fs: Any, fingerprints: list[str]) -> int:
    total = 0
    for fp_dir in fingerprints:
        fs.invalidate_cache(fp_dir)
        try:
            total += sum(retrying(f"sizing {fp_dir}", lambda path=fp_dir: fs.du(path, total=False)).values())
        except FileNotFoundError:
            pass
    return total


def _compact(fs: Any, fp_dir: str, bucket_dir: str, cutoff_ms: int, now_ms: int, report: PruneReport,
             first_pass: bool) -> _Compacted:
    """Rewrite one bucket as a single segment of its entries written at or after `cutoff_ms`."""
    fingerprint = _name({"name": fp_dir})
    listing = _listing(fs, bucket_dir)
    segments, inputs, removable = [], [], []
    for entry in listing:
        name, path = _name(entry), entry["name"]
        if (temporary := TEMPORARY.match(name)) is not None:
            if now_ms - int(temporary.group(1)) > TEMPORARY_GRACE_S * 1000:
                removable.append(path)
                report.temporaries_removed += 1
            continue
        if not SEGMENT.match(name):
            continue
        try:
            data = retrying(f"reading {path}", lambda path=path: fs.cat_file(path))
        except FileNotFoundError:
            continue
        segment = _read_segment(data, name, fingerprint)
        if segment is None:
            removable.append(path)
            report.corrupt_removed += 1
            continue
        segments.append(segment)
        inputs.append((path, len(segment.k0)))
    entries = _Entries().merged(*segments)
    kept = entries.since(cutoff_ms)
    report.entries_dropped += len(entries.k0) - len(kept.k0)
    if first_pass:
        report.entries_kept += len(kept.k0)
    else:
        report.entries_kept -= len(entries.k0) - len(kept.k0)
    unchanged = len(inputs) == 1 and len(kept.k0) == inputs[0][1]
    target, size = (inputs[0][0], 0) if unchanged else ("", 0)
    if not unchanged and len(kept.k0):
        data = _segment_bytes(kept, fingerprint)
        target = join(bucket_dir, _segment_name(data, now_ms))
        retrying(f"writing {target}", lambda: put_atomic(data, fs, target))
        size = len(data)
    if unchanged:
        size = next(int(e.get("size") or 0) for e in listing if e["name"] == target)
    if not unchanged:
        removable += [path for path, _ in inputs]  # deleted only once the compacted segment is published
        report.segments_compacted += len(inputs)
    if removable:
        retrying(f"deleting {len(removable)} file(s) in {bucket_dir}", lambda: fs.rm(removable))
    hours: dict[int, int] = {}
    if len(kept.k0):
        values, counts = np.unique(kept.written // 3_600_000, return_counts=True)
        hours = {int(v): int(c) for v, c in zip(values, counts)}
    return _Compacted(target, size, hours)
