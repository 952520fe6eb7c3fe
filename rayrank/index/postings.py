"""A shard's inverted file: its distinct (centroid, document) pairs, centroid-major and document-major.

Written next to the shard's vectors (`shards/{shard}.postings.npy`) when the shard is packed, so that
opening an index memory-maps its postings instead of rebuilding them from every token's code: a
query reads only the posting lists of the centroids it probes and the centroid lists of its
candidates. One int32 array (a shard holds fewer than 2**31 tokens):

```
[k, n | centroid starts (k + 1) | documents by centroid (pairs) | document starts (n + 1)
      | centroids by document (pairs) | document offsets (n)]
```
Documents are numbered in packing order and named by their first token row (`offset`): the build
may later drop a duplicate's row from the shard's doc table and updates tombstone documents, so the
reader matches these offsets against the doc table it holds (`Postings.to_positions`).
"""

from __future__ import annotations

import numpy as np

from rayrank.index.reader import token_rows


def build_postings(codes: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, centroids: int) -> np.ndarray:
    """The postings array of documents owning token rows `offsets[i] : offsets[i] + sizes[i]` of `codes`."""
    offsets, sizes = np.asarray(offsets, np.int64), np.asarray(sizes, np.int64)
    n = len(sizes)
    pairs = np.unique(np.asarray(codes)[token_rows(offsets, sizes)].astype(np.int64) * max(n, 1)
                      + np.repeat(np.arange(n), sizes))  # centroid-major, documents ascending in each
    cents, docs = pairs // max(n, 1), pairs % max(n, 1)
    by_doc = np.argsort(docs, kind="stable")
    return np.concatenate([[centroids, n], np.searchsorted(cents, np.arange(centroids + 1)), docs,
                           np.searchsorted(docs[by_doc], np.arange(n + 1)), cents[by_doc], offsets]).astype(np.int32)


class Postings:
    """Views into one shard's postings array (a memory map or an array in memory); nothing is copied."""

    def __init__(self, array: np.ndarray) -> None:
        k, n = int(array[0]), int(array[1])
        pairs = (len(array) - 2 - (k + 1) - (n + 1) - n) // 2
        bounds = np.cumsum([2, k + 1, pairs, n + 1, pairs, n])
        self.centroid_starts, self.docs, self.doc_starts, self.centroids, self.offsets = (
            array[a:b] for a, b in zip(bounds[:-1], bounds[1:]))

    def to_positions(self, offsets: np.ndarray, sizes: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Per postings document, its global number where the reader lists it (doc table `offsets`/`sizes`
        at `positions`, in offset order), else -1 (dropped duplicate, tombstoned)."""
        out = np.full(len(self.offsets), -1, np.int32)
        if not len(offsets) or not len(out):
            return out
        mine = np.asarray(self.offsets, np.int64)
        # the last listed document starting at or before each offset; an empty document shares its
        # successor's offset, so it must hold tokens to be the match
        at = np.searchsorted(offsets, mine, side="right") - 1
        valid = at >= 0
        at = np.maximum(at, 0)
        valid &= (offsets[at] == mine) & (sizes[at] > 0)
        out[valid] = positions[at[valid]]
        return out
