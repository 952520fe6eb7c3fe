"""One staged object per shard: its scored rows split by output bucket, as Parquet streams back to back.

A shard's rows go to every output bucket, so staging one file per (shard, bucket) makes shards ×
buckets small objects (each a PUT, a copy and a delete on S3, then a HEAD and a GET to read it).
Here a shard writes one object with one PUT; the byte range of each bucket's piece goes into the
shard's commit marker, and a rank task fetches its piece of each shard with one ranged GET. Each
piece is a whole Parquet stream, so reading it needs no footer request and no other bucket's bytes.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem


def pack_buckets(table: pa.Table, buckets: np.ndarray) -> tuple[bytes, dict[int, tuple[int, int]]]:
    """(object bytes, {bucket: (start, end) byte range}) for the rows of `table` split by `buckets`.

    Rows keep their order within a bucket. Buckets without rows get no piece.
    """
    order = np.argsort(buckets, kind="stable")
    ordered, keys = table.take(pa.array(order)), buckets[order]
    cuts = np.flatnonzero(np.diff(keys)) + 1
    buffer, ranges = io.BytesIO(), {}
    for start, end in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(keys)]))):
        if end > start:
            first = buffer.tell()
            pq.write_table(ordered.slice(int(start), int(end - start)), buffer, compression="zstd")
            ranges[int(keys[start])] = (first, buffer.tell())
    return buffer.getvalue(), ranges


def read_piece(fs: AbstractFileSystem, path: str, start: int, end: int) -> pa.Table:
    """One bucket's piece of a staged object: a single ranged read of bytes [start, end)."""
    return pq.read_table(io.BytesIO(fs.cat_file(path, start=start, end=end)))
