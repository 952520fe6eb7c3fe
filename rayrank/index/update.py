"""Updates to a finished index: append, delete, compact; one generation each, published by the manifest.

An update writes new immutable files (shards named `g{N}-...`, a cumulative tombstone file
`tombstones/gen-N.parquet`, a retrained `codec-N.npz`) and then one new `_manifest.json` with
`generation` N that lists them: the manifest is the commit point, so a reader sees generation N-1 or
N, never a mix, and one that opened N-1 keeps reading its own (unchanged) files.

Replacing a doc_id tombstones its old (shard, doc_id) row and adds the new row in a new shard.
IVF postings are per shard (`codes.npy`): a new shard brings its own, tombstoned rows are left out
when a reader opens the index, so nothing is rebuilt on disk.

One writer at a time: the update's lease is `_update/_staging/job.json` (the job machinery's
staging), created exclusively on local disk. A killed update's lease stays; the same command rerun
resumes it, any other update is refused until it is finished or `_update/` removed. Before
publishing, the writer re-reads the manifest and refuses if its generation moved (compare and
swap), which also catches two writers racing for the lease on an object store.

Codec drift: every shard records the sum over its tokens of 1 - cos(token, its centroid); the
manifest keeps the build's mean (`compression.residual_error`) and the added documents' mean since
the codec was trained (`drift`). Their ratio above `DRIFT_ADVICE` means the centroids no longer fit
the new tokens (IVF candidates and residual compression degrade): `compact --retrain` retrains them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import socket
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from rayrank.errors import OutputConflictError
from rayrank.index.build import pack_shard, residual_error_sum, train_codec, write_shard
from rayrank.index.format import (
    MANIFEST,
    TOMBSTONES_SCHEMA,
    generation,
    npy_bytes,
    parquet_bytes,
    read_manifest,
    read_tombstones,
    shard_files,
    write_bytes_atomic,
)
from rayrank.index.postings import build_postings
from rayrank.index.reader import IndexReader, token_rows
from rayrank.io.storage import is_object_store, join, read_json, write_json_atomic

UPDATE_DIR = "_update"
LEASE = "_update/_staging/job.json"
# Measured (bench/index_updates.py, 20,000 documents): appends from the build's topics 1.01-1.02; appends
# with 10%, 30% and 55% of their documents from unseen topics 1.12, 1.36 and 1.65 (IVF Recall@100 0.08
# below a fresh build by then). 1.25 advises a retrain once about a fifth of what was added is new ground.
DRIFT_ADVICE = 1.25


def update_id(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def take_lease(fs, root: str, job_id: str, kind: str, manifest: dict[str, Any],
               state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hold the index's update lease for `job_id`; returns its stored state (a killed run's, on a rerun).

    A lease left by an update the manifest already lists (killed after publishing) is cleared.
    Raises OutputConflictError while another update holds it.
    """
    path = join(root, LEASE)
    held = read_json(fs, path)
    if held is not None and held["job_id"] != job_id:
        if held["job_id"] in {u["job_id"] for u in manifest.get("updates", [])}:
            release(fs, root)
            held = None
        else:
            raise _busy(root, held)
    if held is None:
        held = {"job_id": job_id, "kind": kind, "started": datetime.now(timezone.utc).isoformat(),
                "host": socket.gethostname(), "pid": os.getpid(), **(state or {})}
        data = json.dumps(held, indent=2).encode()
        if is_object_store(fs):  # no exclusive create there: the generation check at publish decides
            fs.pipe_file(path, data)
        else:
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            try:
                with open(path, "xb") as handle:
                    handle.write(data)
            except FileExistsError:
                raise _busy(root, read_json(fs, path) or {}) from None
    return held


def _busy(root: str, held: dict[str, Any]) -> OutputConflictError:
    return OutputConflictError(
        f"{root} has another update in progress or killed ({held.get('kind')} started {held.get('started')} by "
        f"pid {held.get('pid')} on {held.get('host')}): rerun that command to finish it, or remove "
        f"{join(root, UPDATE_DIR)} to abandon it (its new files stay unreferenced until `rayrank index compact`).")


def release(fs, root: str) -> None:
    if fs.exists(join(root, UPDATE_DIR)):
        fs.rm(join(root, UPDATE_DIR), recursive=True)


def publish(fs, root: str, manifest: dict[str, Any], base_generation: int) -> dict[str, Any]:
    """Write `manifest` as generation base + 1, refusing if another writer published since `base_generation`."""
    now = generation(read_manifest(fs, root))
    if now != base_generation:
        raise OutputConflictError(f"{root} moved from generation {base_generation} to {now} while this update ran "
                                  "(another writer); rerun the command to apply it to the new generation.")
    manifest["generation"] = base_generation + 1
    write_json_atomic(manifest, fs, join(root, MANIFEST))
    return manifest


def write_tombstones(fs, root: str, number: int, table: pa.Table) -> dict[str, Any] | None:
    """Generation `number`'s cumulative tombstone file (one file to read per reader); None when empty."""
    if not table.num_rows:
        return None
    path = f"tombstones/gen-{number:06d}.parquet"
    data = parquet_bytes(table.cast(TOMBSTONES_SCHEMA))
    return {"path": path, "sha256": write_bytes_atomic(fs, join(root, path), data), "bytes": len(data),
            "rows": table.num_rows}


def tombstones_of(reader: IndexReader, positions: Sequence[int]) -> pa.Table:
    """(shard id, doc_id) rows of live documents (global numbers) of `reader`."""
    shard_ids = [s["id"] for s in reader.manifest["shards"]]
    return pa.table({"shard": [shard_ids[reader.shard_of[p]] for p in positions],
                     "doc_id": reader.doc_ids.take(positions)}, schema=TOMBSTONES_SCHEMA)


def residual_error(reader: IndexReader) -> float | None:
    """The build's mean 1 - cos(token, centroid), from the manifest, else measured on up to 1,024 stored
    documents (indexes built before the figure was recorded; decompressed vectors for residual ones)."""
    recorded = reader.manifest["compression"].get("residual_error")
    if recorded is not None or not len(reader):
        return recorded
    vectors, sizes = reader.gather(np.arange(min(1024, len(reader))))
    return residual_error_sum(reader.codec, vectors, reader.codec.codes(vectors)) / max(int(sizes.sum()), 1)


def drift_after(reader: IndexReader, tokens: int, error_sum: float) -> dict[str, Any]:
    """The manifest's `drift` once `tokens` more tokens (with that residual error sum) were added."""
    before = reader.manifest.get("drift") or {}
    tokens_all = int(before.get("added_tokens", 0)) + tokens
    error_all = float(before.get("added_error_sum", 0.0)) + error_sum
    build = residual_error(reader)
    added = error_all / tokens_all if tokens_all else None
    ratio = round(added / build, 4) if added is not None and build else None
    return {"codec_residual_error": build, "added_tokens": tokens_all, "added_error_sum": round(error_all, 4),
            "added_residual_error": round(added, 6) if added is not None else None, "ratio": ratio,
            "retrain_advised": bool(ratio is not None and ratio > DRIFT_ADVICE)}


def next_manifest(reader: IndexReader, shards: list[dict], tombstones: dict | None, record: dict[str, Any],
                  docs: int, **changes: Any) -> dict[str, Any]:
    """Generation N+1's manifest: N's with the new shard list, tombstone file and update record."""
    manifest = copy.deepcopy(reader.manifest)
    manifest.pop("tombstones", None)
    if tombstones:
        manifest["tombstones"] = tombstones
    tokens = int(changes.pop("total_tokens"))
    manifest.update(shards=shards, docs=docs, total_tokens=tokens, tokens_per_doc=round(tokens / docs, 2) if docs
                    else None, **changes)
    record = {"generation": reader.generation + 1, **record,
              "finished": datetime.now(timezone.utc).isoformat()}
    manifest["updates"] = manifest.get("updates", []) + [record]
    return manifest


def commit_add(reader: IndexReader, entries: list[dict[str, Any]], new_ids: Sequence[str],
               record: dict[str, Any]) -> dict[str, Any]:
    """Publish generation N+1 = `reader`'s generation N plus the written shards `entries` (holding `new_ids`):
    a doc_id already live in N is replaced (its old row tombstoned)."""
    replaced = [p for p in (reader.position.get(d) for d in new_ids) if p is not None]
    old = read_tombstones(reader.fs, reader.root, reader.manifest)
    tomb = (write_tombstones(reader.fs, reader.root, reader.generation + 1,
                             pa.concat_tables([old, tombstones_of(reader, replaced)]))
            if replaced else reader.manifest.get("tombstones"))
    tokens = sum(int(e["tokens"]) for e in entries)
    live_tokens = int(reader.sizes.sum()) - int(reader.sizes[replaced].sum()) + tokens
    error = sum(float(e.get("residual_error_sum", 0.0)) for e in entries)
    manifest = next_manifest(reader, reader.manifest["shards"] + entries, tomb,
                             {**record, "kind": "add", "docs_added": len(new_ids), "replaced": len(replaced)},
                             docs=len(reader) - len(replaced) + len(new_ids), total_tokens=live_tokens,
                             drift=drift_after(reader, tokens, error))
    return publish(reader.fs, reader.root, manifest, reader.generation)


def append(url: str, doc_ids: Sequence[str], embeddings: Sequence[np.ndarray], shard_docs: int = 10_000,
           storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Add documents from token embeddings in one process (the add job's commit, without Ray or a model).

    For tests and benchmarks that already hold embeddings (pooled like the index); the first copy of a
    doc_id repeated in `doc_ids` wins. Returns the new manifest.
    """
    started = time.perf_counter()
    reader = IndexReader(url, storage_options)
    job_id = update_id({"kind": "append", "index": reader.manifest.get("job_id"), "generation": reader.generation,
                        "ids": hashlib.sha256("\n".join(doc_ids).encode()).hexdigest()})
    take_lease(reader.fs, reader.root, job_id, "append", reader.manifest)
    firsts: dict[str, int] = {}
    for i, doc_id in enumerate(doc_ids):
        firsts.setdefault(doc_id, i)
    keep = list(firsts.values())
    entries = []
    for number, start in enumerate(range(0, len(keep), shard_docs)):
        part = keep[start:start + shard_docs]
        sid = f"g{reader.generation + 1}-{number:05d}"
        data, packed = pack_shard(sid, [doc_ids[i] for i in part], [embeddings[i] for i in part], reader.codec,
                                  reader.compression)
        files = write_shard(reader.fs, reader.root, sid, data, reader.compression)
        entries.append({"id": sid, **packed, "duplicates": 0, "files": files})
    manifest = commit_add(reader, entries, [doc_ids[i] for i in keep],
                          {"job_id": job_id, "elapsed_s": round(time.perf_counter() - started, 3)})
    release(reader.fs, reader.root)
    return manifest


def delete(url: str, doc_ids: Sequence[str], storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Tombstone `doc_ids` as one new generation; ids not in the index are counted, not refused.

    Returns the update record (`deleted`, `not_found`, `generation`); nothing is published when no id is live.
    """
    started = time.perf_counter()
    reader = IndexReader(url, storage_options)
    unique = list(dict.fromkeys(doc_ids))
    job_id = update_id({"kind": "delete", "index": reader.manifest.get("job_id"), "generation": reader.generation,
                        "ids": hashlib.sha256("\n".join(unique).encode()).hexdigest()})
    take_lease(reader.fs, reader.root, job_id, "delete", reader.manifest)
    live = [p for p in (reader.position.get(d) for d in unique) if p is not None]
    record = {"job_id": job_id, "kind": "delete", "deleted": len(live), "not_found": len(unique) - len(live)}
    if live:
        old = read_tombstones(reader.fs, reader.root, reader.manifest)
        tomb = write_tombstones(reader.fs, reader.root, reader.generation + 1,
                                pa.concat_tables([old, tombstones_of(reader, live)]))
        manifest = next_manifest(reader, reader.manifest["shards"], tomb,
                                 {**record, "elapsed_s": round(time.perf_counter() - started, 3)},
                                 docs=len(reader) - len(live),
                                 total_tokens=int(reader.sizes.sum()) - int(reader.sizes[live].sum()))
        record["generation"] = publish(reader.fs, reader.root, manifest, reader.generation)["generation"]
    else:
        record["generation"] = reader.generation
    release(reader.fs, reader.root)
    return record


def referenced(manifest: dict[str, Any]) -> set[str]:
    """Every file (relative path) a generation reads."""
    paths = {f["path"] for s in manifest["shards"] for f in s["files"].values()}
    paths.add(manifest["compression"].get("codec", {}).get("path", "codec.npz"))
    if manifest.get("tombstones"):
        paths.add(manifest["tombstones"]["path"])
    return paths


def stored_files(fs, root: str) -> list[str]:
    """Relative paths of the index's data files: shards, tombstones and codecs (not `_errors/`, `_update/`)."""
    found = [p for p in fs.find(root) if p.rsplit("/", 1)[-1].endswith((".npy", ".parquet", ".npz"))]
    rels = [p[len(root.rstrip("/")) + 1:] for p in found]
    return [r for r in rels if r.startswith(("shards/", "tombstones/", "codec"))]


def compact(url: str, retrain: bool = False, sample_docs: int = 1024, seed: int = 0,
            storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rewrite the shards holding tombstoned rows without them (all shards, with `retrain`) as generation N+1.

    Without `retrain` the stored rows are copied as they are (codes, residuals or float16 vectors:
    nothing is re-quantised); the deleted doc_ids stay listed (without rows). With it, k-means is
    retrained (same number of centroids) on the live tokens of `sample_docs` documents drawn across
    the index, and every shard re-encoded: exact for
    uncompressed indexes, from the decompressed vectors for residual ones. Afterwards files that
    neither generation N nor N+1 reads are removed (superseded tombstones, shards compacted before
    N, files of abandoned updates): a reader still holding a generation older than N must reopen.
    Returns the update record.
    """
    started = time.perf_counter()
    reader = IndexReader(url, storage_options)
    fs, root, base, number_next = reader.fs, reader.root, reader.manifest, reader.generation + 1
    job_id = update_id({"kind": "compact", "index": base.get("job_id"), "generation": reader.generation,
                        "retrain": retrain})
    take_lease(fs, root, job_id, "compact", base)
    tombstoned = set(read_tombstones(fs, root, base)["shard"].to_pylist())
    drift = base.get("drift") or {}
    codec, compression = reader.codec, copy.deepcopy(base["compression"])
    if retrain and len(reader):
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(reader), size=min(sample_docs, len(reader)), replace=False))
        vectors, sizes = reader.gather(chosen)
        codec, stats = train_codec(np.split(vectors, np.cumsum(sizes)[:-1]), codec.nbits, len(codec.centroids),
                                   seed=seed)
        path = f"codec-{number_next:06d}.npz"
        data = codec.to_bytes()
        compression.update(centroids=stats["centroids"], sample_docs=stats["sample_docs"],
                           kmeans_tokens=stats["kmeans_tokens"],
                           codec={"path": path, "sha256": write_bytes_atomic(fs, join(root, path), data),
                                  "bytes": len(data)})
    entries, rewritten, error, tokens = [], 0, 0.0, 0
    for number, shard in enumerate(base["shards"]):
        positions = np.flatnonzero(reader.shard_of == number)
        if not retrain and shard["id"] not in tombstoned:
            entries.append(shard)
            continue
        if not len(positions):  # every document of the shard deleted: it goes
            continue
        sid = f"g{number_next}-{number:05d}"
        if retrain:
            vectors, sizes = reader.gather(positions)
            data, packed = pack_shard(sid, reader.doc_ids.take(positions),
                                      np.split(vectors, np.cumsum(sizes)[:-1]), codec, reader.compression)
            error, tokens = error + packed["residual_error_sum"], tokens + packed["tokens"]
        else:
            data, packed = _copy_rows(reader, number, positions, sid)
        entries.append({"id": sid, **packed, "duplicates": 0,
                        "files": write_shard(fs, root, sid, data, reader.compression)})
        rewritten += 1
    if retrain:
        compression["residual_error"] = round(error / tokens, 6) if tokens else None
        drift = {}  # the new centroids were fitted to every live document: nothing added since
    record = {"job_id": job_id, "kind": "compact", "retrained": retrain, "rewritten_shards": rewritten,
              "dropped_rows": int(sum(s["docs"] for s in base["shards"])) - len(reader),
              "drift_before": base.get("drift"), "elapsed_s": round(time.perf_counter() - started, 3)}
    # the deleted doc_ids outlive their rows (shard ""), so rerank --index still refuses them by id
    forgotten = pa.table({"shard": [""] * len(reader.deleted), "doc_id": sorted(reader.deleted)},
                         schema=TOMBSTONES_SCHEMA)
    manifest = next_manifest(reader, entries, write_tombstones(fs, root, number_next, forgotten), record,
                             docs=len(reader), total_tokens=int(reader.sizes.sum()), compression=compression,
                             drift=drift)
    publish(fs, root, manifest, reader.generation)
    keep = referenced(base) | referenced(manifest)
    for rel in stored_files(fs, root):
        if rel not in keep:
            fs.rm(join(root, rel))
    release(fs, root)
    return manifest["updates"][-1]


def _copy_rows(reader: IndexReader, number: int, positions: np.ndarray, sid: str
               ) -> tuple[dict[str, bytes], dict[str, Any]]:
    """A new shard of the live documents `positions` of shard `number`, its stored rows copied unchanged."""
    sizes = reader.sizes[positions]
    rows = token_rows(reader.offsets[positions], sizes)
    offsets = (np.cumsum(sizes) - sizes).astype(np.int64)
    files = shard_files(sid, reader.compression)
    docs = pa.table({"doc_id": pa.array(reader.doc_ids.take(positions), pa.string()), "offset": offsets,
                     "tokens": sizes.astype(np.int32)})
    data = {files["docs"]: parquet_bytes(docs)}
    arrays = reader.arrays(number)
    for role in files.keys() - {"docs", "postings"}:  # postings are rebuilt: document numbers change
        data[files[role]] = npy_bytes(np.asarray(arrays[role].take(rows)))
    vector_bytes = sum(len(b) for b in data.values()) - len(data[files["docs"]])
    data[files["postings"]] = npy_bytes(build_postings(arrays["codes"].take(rows), offsets, sizes,
                                                       len(reader.codec.centroids)))
    return data, {"docs": len(positions), "tokens": int(sizes.sum()), "vector_bytes": vector_bytes}
