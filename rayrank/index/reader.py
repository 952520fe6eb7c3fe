"""Read an index by doc_id (memory-mapped locally, byte ranges on S3) and score candidates from it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayrank.index.compress import ResidualCodec, pool_tokens
from rayrank.index.format import (
    CODEC,
    MANIFEST,
    IndexFormatError,
    NpyArray,
    check_model,
    dead_by_shard,
    generation,
    read_manifest,
    read_tombstones,
)
from rayrank.io.storage import filesystem, join
from rayrank.scoring.late_interaction import maxsim


def token_rows(offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Row numbers `offsets[i] : offsets[i] + sizes[i]` of every document, concatenated (int64).

    Example:
        >>> token_rows(np.array([5, 0]), np.array([2, 3])).tolist()
        [5, 6, 0, 1, 2]
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    firsts = np.cumsum(sizes) - sizes
    return np.repeat(np.asarray(offsets, dtype=np.int64) - firsts, sizes) + np.arange(int(sizes.sum()))


class DocIds(Sequence[str]):
    """An index's doc_ids in global document order, as one Arrow string array: a few bytes a document
    against a Python list's ~60, which matters at millions of documents."""

    def __init__(self, array: pa.StringArray) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.array[i].to_pylist()
        return self.array[int(i)].as_py()

    def __iter__(self) -> Iterator[str]:
        return iter(self.array.to_pylist())

    def __eq__(self, other: object) -> bool:  # like a list of the same doc_ids
        if isinstance(other, DocIds):
            return self.array.equals(other.array)
        return isinstance(other, Sequence) and not isinstance(other, str) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def take(self, positions: Sequence[int] | np.ndarray) -> list[str]:
        return self.array.take(pa.array(np.asarray(positions, dtype=np.int64))).to_pylist()


@dataclass
class Block:
    """Consecutive documents of one shard: `vectors[starts[i]:starts[i] + sizes[i]]` is document i."""

    doc_index: np.ndarray  # global document numbers (positions in `IndexReader.doc_ids`)
    starts: np.ndarray
    sizes: np.ndarray
    vectors: np.ndarray  # float32 (tokens, dim), L2-normalised


class IndexReader:
    """Token embeddings of an index by doc_id, without loading the index into memory.

    Args:
        url: INDEX_DIR, local or s3://.
        storage_options: fsspec/s3fs options (see `rayrank.io.storage.storage_options`).

    Holds the doc_id → (shard, offset, tokens) table in memory (about 30 bytes per document, doc_ids
    as one Arrow array); embeddings stay on disk until asked for.

    A reader is one generation of the index: it reads the manifest once and only the files it lists,
    which updates never change (rayrank.index.update), so it stays consistent while a newer
    generation is written. Tombstoned rows are left out of that table, so no read path (get,
    gather, blocks, the IVF postings) can reach a deleted document; `deleted` names them.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url, self.storage_options = url, storage_options
        self.fs, self.root = filesystem(url, storage_options)
        self._stamp = self._manifest_stamp()  # before reading: a commit while opening shows up as a change
        self.manifest = read_manifest(self.fs, self.root)
        self.generation = generation(self.manifest)
        self.compression: str = self.manifest["compression"]["kind"]
        self.pool_factor: int = int(self.manifest["compression"].get("pool_factor", 1))
        codec_path = self.manifest["compression"].get("codec", {}).get("path", CODEC)
        self.codec = ResidualCodec.from_bytes(self.fs.cat_file(join(self.root, codec_path)))
        self.dim: int = int(self.manifest["dim"])
        tombstones = read_tombstones(self.fs, self.root, self.manifest)
        dead = dead_by_shard(tombstones)
        ids, shard_of, offsets, sizes = [], [], [], []
        for number, shard in enumerate(self.manifest["shards"]):
            with self.fs.open(join(self.root, shard["files"]["docs"]["path"]), "rb") as handle:
                docs = pq.read_table(handle, columns=["doc_id", "offset", "tokens"])
            if shard["id"] in dead:
                docs = docs.filter(pc.invert(pc.is_in(docs["doc_id"], value_set=dead[shard["id"]])))
            ids += docs["doc_id"].chunks
            shard_of.append(np.full(docs.num_rows, number, dtype=np.int32))
            offsets.append(docs["offset"].to_numpy())
            sizes.append(docs["tokens"].to_numpy())
        self.doc_ids = DocIds(pa.chunked_array(ids, pa.string()).combine_chunks())
        self.shard_of = np.concatenate(shard_of) if shard_of else np.empty(0, np.int32)
        self.offsets = np.concatenate(offsets) if offsets else np.empty(0, np.int64)
        self.sizes = np.concatenate(sizes).astype(np.int64) if sizes else np.empty(0, np.int64)
        if pc.count_distinct(self.doc_ids.array).as_py() != len(self.doc_ids):
            raise IndexFormatError(f"{url}: a doc_id appears in more than one shard; the index is corrupt.")
        gone = tombstones["doc_id"].combine_chunks()
        self.deleted: frozenset[str] = frozenset(
            gone.filter(pc.invert(pc.is_in(gone, value_set=self.doc_ids.array))).to_pylist())
        self._position: dict[str, int] | None = None
        self._arrays: dict[int, dict[str, NpyArray]] = {}

    def _manifest_stamp(self) -> tuple:
        """What changes when a new manifest is published (a rename locally, a new object on S3)."""
        try:
            info = self.fs.info(join(self.root, MANIFEST), refresh=True)
        except FileNotFoundError:
            return ()
        return tuple(info.get(k) for k in ("ino", "mtime", "size", "ETag", "LastModified"))

    def current(self) -> IndexReader:
        """This reader, or a new one when another generation has been published since it was opened.

        Costs one stat (a HEAD on S3); long-lived holders (the Serve replica) call it per request so that
        a deleted document is gone from the next request on.
        """
        if self._manifest_stamp() == self._stamp:
            return self
        return IndexReader(self.url, self.storage_options)

    @property
    def position(self) -> dict[str, int]:
        """doc_id → global document number; built on first use (about 100 bytes a document), which
        search never needs."""
        if self._position is None:
            self._position = {doc_id: i for i, doc_id in enumerate(self.doc_ids)}
        return self._position

    def __len__(self) -> int:
        return len(self.doc_ids)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self.position

    def check_model(self, model_name: str) -> None:
        check_model(self.manifest, self.url, model_name)

    def arrays(self, number: int) -> dict[str, NpyArray]:
        """Shard `number`'s stored arrays by role (codes, embeddings or residuals), opened on first use."""
        if number not in self._arrays:
            files = self.manifest["shards"][number]["files"]
            self._arrays[number] = {role: NpyArray(self.fs, join(self.root, f["path"]))
                                    for role, f in files.items() if role != "docs"}
        return self._arrays[number]

    def _vectors(self, number: int, start: int, stop: int) -> np.ndarray:
        arrays = self.arrays(number)
        if self.compression == "residual":
            return self.codec.decompress(arrays["codes"].rows(start, stop), arrays["residuals"].rows(start, stop))
        return arrays["embeddings"].rows(start, stop)

    def codes(self, number: int) -> np.ndarray:
        """Centroid id of every token row of shard `number` (the IVF postings are built from these)."""
        codes = self.arrays(number)["codes"]
        return np.asarray(codes.rows(0, len(codes)))

    def token_table(self, number: int) -> np.ndarray | None:
        """Shard `number`'s stored float16 token rows as one memory map (local uncompressed indexes), else None."""
        table = self.arrays(number)["embeddings"].memmap if self.compression == "none" else None
        return table if table is not None and table.dtype == np.float16 else None

    def get(self, doc_ids: Sequence[str]) -> list[np.ndarray | None]:
        """(tokens, dim) embeddings per doc_id (float16 stored, float32 decompressed); None if not indexed."""
        out: list[np.ndarray | None] = []
        for doc_id in doc_ids:
            i = self.position.get(doc_id)
            if i is None:
                out.append(None)
                continue
            start = int(self.offsets[i])
            out.append(np.array(self._vectors(int(self.shard_of[i]), start, start + int(self.sizes[i]))))
        return out

    def get_index(self, positions: np.ndarray) -> list[np.ndarray]:
        """Like `get`, by global document number."""
        return self.get(self.doc_ids.take(positions))

    def gather(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float32 token vectors of many documents (global numbers) concatenated in that order, and their
        sizes: one read per shard instead of one per document (the IVF stage's exact scoring)."""
        positions = np.asarray(positions, dtype=np.int64)
        sizes = self.sizes[positions]
        out = np.empty((int(sizes.sum()), self.dim), np.float32)
        starts = np.cumsum(sizes) - sizes
        shard_of = self.shard_of[positions]
        for number in np.unique(shard_of):
            mine = np.flatnonzero(shard_of == number)
            rows = token_rows(self.offsets[positions[mine]], sizes[mine])
            arrays = self.arrays(int(number))
            if self.compression == "residual":
                vectors = self.codec.decompress(arrays["codes"].take(rows), arrays["residuals"].take(rows))
            else:
                vectors = arrays["embeddings"].take(rows)
            out[token_rows(starts[mine], sizes[mine])] = vectors
        return out, sizes

    def blocks(self, max_tokens: int) -> Iterator[Block]:
        """Stream the whole index in blocks of at most `max_tokens` token rows (one document may exceed it)."""
        first = 0
        for number in range(len(self.manifest["shards"])):
            count = int(np.sum(self.shard_of == number))
            positions = np.arange(first, first + count)
            first += count
            start = 0
            while start < count:
                cumulative = np.cumsum(self.sizes[positions[start:]])
                stop = start + max(1, int(np.searchsorted(cumulative, max_tokens, side="right")))
                chosen = positions[start:stop]
                offsets, sizes = self.offsets[chosen], self.sizes[chosen]
                lo, hi = int(offsets.min()), int((offsets + sizes).max())
                span = np.asarray(self._vectors(number, lo, hi), dtype=np.float32)
                rel = offsets - lo
                if hi - lo != int(sizes.sum()):  # rows of dropped duplicates inside the span
                    span = span[token_rows(rel, sizes)]
                    rel = np.concatenate(([0], np.cumsum(sizes)[:-1]))
                yield Block(chosen, rel, sizes, span)
                start = stop


def score_from_index(scorer, reader: IndexReader, queries: Sequence[str], doc_ids: Sequence[str],
                     texts: Sequence[str]) -> tuple[np.ndarray, int]:
    """MaxSim of (query, document) pairs with documents read from the index; only queries are encoded.

    Documents missing from the index are encoded on the fly (and pooled like the index). Returns
    (float32 scores in input order, number of pairs whose document was not in the index).
    """
    scores = np.empty(len(queries), dtype=np.float32)
    if not len(queries):
        return scores, 0
    # Documents are read one query at a time, so memory holds one query's candidates, not the batch's.
    missing = [i for i, doc_id in enumerate(doc_ids) if doc_id not in reader]
    fresh = dict(zip(missing, (pool_tokens(e, reader.pool_factor)
                               for e in scorer.encode_documents([texts[i] for i in missing])))) if missing else {}
    unique = list(dict.fromkeys(queries))
    encoded = dict(zip(unique, scorer.encode_queries(unique)))
    by_query: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        by_query.setdefault(q, []).append(i)
    for q, rows in by_query.items():
        stored = reader.get([doc_ids[r] for r in rows])
        scores[rows] = maxsim(encoded[q], [fresh[r] if emb is None else emb for r, emb in zip(rows, stored)])
    return scores, len(missing)
