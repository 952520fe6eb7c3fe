"""On-disk layout of an index directory (local or s3://) and its manifest.

```
INDEX_DIR/
  _manifest.json            written last: model, conventions, codec, shards (rows, tokens, checksums)
  codec.npz                 centroids (k, dim) fp16; residual bucket cutoffs and weights; nbits
  shards/{shard}.parquet    doc_id (string), offset (int64), tokens (int32): one row per document
  shards/{shard}.npy        compression none: float16 (shard tokens, dim), L2-normalised
  shards/{shard}.codes.npy  nearest centroid per token (uint16/int32): residual codes
  shards/{shard}.postings.npy  int32: the shard's (centroid, document) pairs for IVF search (rayrank.index.postings)
  shards/{shard}.residuals.npy  compression residual: uint8 (shard tokens, dim * nbits / 8), packed
  tombstones/gen-N.parquet  shard (string), doc_id (string): rows deleted or replaced up to generation N
  codec-N.npz               centroids retrained by `rayrank index compact --retrain` at generation N
  _update/                  the update in progress (its lease and staging; rayrank.index.update)
  _errors/*.parquet         documents not indexed, each with a reason
```
Every file but `_manifest.json` is immutable once a manifest lists it: an update writes new files, then
a manifest with the next `generation` (the commit point), so a reader of generation N is never disturbed.
Document i of a shard owns token rows `offset[i] : offset[i] + tokens[i]` of the shard's vector and code `.npy`.
`.npy` files are memory-mapped when local (`np.load(mmap_mode="r")`) and read by byte range on S3, so a
reader never loads the index whole. A document dropped as a cross-shard duplicate loses its Parquet
row; its token rows stay in the `.npy` unreferenced.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from rayrank.errors import IndexFormatError
from rayrank.io.storage import join, put_atomic, read_json

FORMAT_VERSION = 1
MANIFEST = "_manifest.json"
CODEC = "codec.npz"
DOCS_SCHEMA = pa.schema([("doc_id", pa.string()), ("offset", pa.int64()), ("tokens", pa.int32())])
TOMBSTONES_SCHEMA = pa.schema([("shard", pa.string()), ("doc_id", pa.string())])


def shard_files(shard_id: str, compression: str) -> dict[str, str]:
    """Role → file name (relative to INDEX_DIR) of one shard's files."""
    files = {"docs": f"shards/{shard_id}.parquet", "codes": f"shards/{shard_id}.codes.npy",
             "postings": f"shards/{shard_id}.postings.npy"}
    if compression == "residual":
        files["residuals"] = f"shards/{shard_id}.residuals.npy"
    else:
        files["embeddings"] = f"shards/{shard_id}.npy"
    return files


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bytes_atomic(fs: AbstractFileSystem, path: str, data: bytes) -> str:
    """Publish `data` whole (rayrank.io.storage.put_atomic); returns the sha256 of what was written."""
    put_atomic(data, fs, path)
    return sha256(data)


def read_manifest(fs: AbstractFileSystem, root: str) -> dict[str, Any]:
    manifest = read_json(fs, join(root, MANIFEST))
    if manifest is None:
        raise IndexFormatError(f"{root} has no {MANIFEST}: not an index, or its build has not finished "
                               "(rerun `rayrank index` with the same arguments to resume it).")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(f"{root}: index format {manifest.get('format_version')!r} is not supported "
                               f"(this rayrank reads format {FORMAT_VERSION}); rebuild the index.")
    return manifest


def generation(manifest: dict[str, Any]) -> int:
    """The manifest's generation: 0 for a fresh build, +1 for every published add, delete or compaction."""
    return int(manifest.get("generation", 0))


def read_tombstones(fs: AbstractFileSystem, root: str, manifest: dict[str, Any]) -> pa.Table:
    """(shard, doc_id) rows that generation's readers skip: the one tombstone file its manifest lists."""
    entry = manifest.get("tombstones")
    if not entry:
        return TOMBSTONES_SCHEMA.empty_table()
    with fs.open(join(root, entry["path"]), "rb") as handle:
        return pq.read_table(handle).select(TOMBSTONES_SCHEMA.names).cast(TOMBSTONES_SCHEMA)


def dead_by_shard(tombstones: pa.Table) -> dict[str, pa.Array]:
    """{shard id: its tombstoned doc_ids}."""
    if not tombstones.num_rows:
        return {}
    shards = tombstones["shard"].to_numpy(zero_copy_only=False)
    ids = tombstones["doc_id"].combine_chunks()
    return {sid: ids.filter(pa.array(shards == sid)) for sid in np.unique(shards)}


def check_model(manifest: dict[str, Any], url: str, model_name: str) -> None:
    """Refuse to encode queries with another model than the one that built the index at `url` (dense or
    late interaction): their vectors would not be comparable, and every score silently wrong."""
    indexed = manifest["model"]["name"]
    if indexed != model_name:
        raise IndexFormatError(f"{url} was built with model {indexed!r}, but the engine uses {model_name!r}; "
                               "pass --model with the index's model (or rebuild the index).")


class NpyArray:
    """Row slices of a 2-D `.npy` file without loading it: a memory map locally, byte ranges elsewhere."""

    def __init__(self, fs: AbstractFileSystem, path: str, mmap: bool | None = None) -> None:
        self.fs, self.path = fs, path
        self._mmap: np.ndarray | None = None
        if mmap is None:
            mmap = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        if mmap:
            self._mmap = np.load(path, mmap_mode="r")
            self.shape, self.dtype = self._mmap.shape, self._mmap.dtype
            return
        with fs.open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(handle)
            if fortran:
                raise IndexFormatError(f"{path}: Fortran-ordered arrays are not supported")
            self._header = handle.tell()
        self.shape, self.dtype = shape, np.dtype(dtype)
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def rows(self, start: int, stop: int) -> np.ndarray:
        if self._mmap is not None:
            return self._mmap[start:stop]
        with self.fs.open(self.path, "rb") as handle:
            handle.seek(self._header + start * self._row_bytes)
            data = handle.read((stop - start) * self._row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.shape[1:]))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows by number (sorted or not), in that order: one fancy index locally, one span read elsewhere."""
        if self._mmap is not None:
            return self._mmap[rows]
        if not len(rows):
            return np.empty((0, *self.shape[1:]), self.dtype)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        return self.rows(lo, hi)[rows - lo]

    @property
    def memmap(self) -> np.ndarray | None:
        """The whole array memory-mapped (local files), else None."""
        return self._mmap

    def __len__(self) -> int:
        return int(self.shape[0])
