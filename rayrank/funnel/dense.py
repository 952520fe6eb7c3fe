"""Single-vector (bi-encoder) retrieval: encode, the dense index's files, exact and HNSW search.

Vectors are the model's own sentence embedding (sentence-transformers' modules: all-MiniLM-L6-v2 mean-
pools its tokens; a bare encoder gets mean pooling), L2-normalised, so inner product is cosine.

A dense index directory (written by `rayrank dense-index`, `rayrank.jobs.dense_index`) holds per
shard `shards/SHARD.parquet` (`doc_id`, `row`: the document's row in the shard's vectors) and
`shards/SHARD.npy` (float32, rows × dim), and `_manifest.json` (model, dim, shards in order). A doc_id
repeated across shards is kept in its first shard only: the job drops it from later doc tables.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from rayrank.extras import require
from rayrank.index.format import IndexFormatError, check_model
from rayrank.io.storage import filesystem, join, read_json
from rayrank.ranking import Ranking

DENSE_FORMAT = "rayrank-dense-1"


def shard_files(shard_id: str) -> dict[str, str]:
    return {"docs": f"shards/{shard_id}.parquet", "vectors": f"shards/{shard_id}.npy"}


class DenseEncoder:
    """A sentence-transformers bi-encoder: `encode(texts)` → float32 (n, dim), unit length.

    `encode` calls from several threads (the jobs' actors run shard calls at once) take turns: each call
    resets padding and truncation on the one Hugging Face tokenizer, which upstream reports as unsafe
    across threads (tokenizers#537, "Already borrowed"; not reproduced here), and one call already
    uses every core, so reads and writes still overlap it.
    """

    def __init__(self, model: str, max_length: int | None = None, batch_size: int = 32) -> None:
        from sentence_transformers import SentenceTransformer

        from rayrank.models import resolve_model

        self.resolved = resolve_model(model)
        self.model = SentenceTransformer(str(self.resolved.path), device="cpu", local_files_only=True)
        if max_length:
            self.model.max_seq_length = max_length
        self.batch_size = batch_size
        self.dim = int(self.model.get_embedding_dimension())
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.empty((0, self.dim), np.float32)
        with self._lock:
            vectors = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `scores` (queries × docs): the k best columns, best first, ties by column, and their scores."""
    k = min(k, scores.shape[1])
    if k == 0:
        return np.empty((len(scores), 0), np.int64), np.empty((len(scores), 0), np.float32)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, 1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, 1), np.take_along_axis(part_scores, order, 1).astype(np.float32)


def read_dense_manifest(fs, root: str, url: str) -> dict[str, Any]:
    """The manifest of the finished dense index at `url`; an IndexFormatError for anything else."""
    manifest = read_json(fs, join(root, "_manifest.json"))
    if manifest is None or manifest.get("format") != DENSE_FORMAT:
        raise IndexFormatError(f"{url} is not a finished dense index (no {DENSE_FORMAT} _manifest.json); "
                               "build it with `rayrank dense-index DOCS INDEX_DIR --model MODEL`")
    return manifest


class DenseIndex:
    """A dense index loaded into memory: `doc_ids` and their float32 unit vectors (4·dim bytes a document).

    Args:
        url: the index directory, local or s3://.
        storage_options: fsspec/s3fs options.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        fs, root = filesystem(url, storage_options)
        manifest = read_dense_manifest(fs, root, url)
        self.url, self.manifest = url, manifest
        ids: list[str] = []
        blocks = []
        for shard in manifest["shards"]:
            with fs.open(join(root, shard["files"]["docs"]), "rb") as handle:
                docs = pq.read_table(handle)
            with fs.open(join(root, shard["files"]["vectors"]), "rb") as handle:
                vectors = np.load(handle)
            ids += docs["doc_id"].to_pylist()
            blocks.append(vectors[np.asarray(docs["row"].to_numpy(), dtype=np.int64)])
        self.doc_ids = ids
        dim = int(manifest["dim"])
        self.vectors = np.concatenate(blocks).astype(np.float32) if blocks else np.empty((0, dim), np.float32)
        self._hnsw = None

    def __len__(self) -> int:
        return len(self.doc_ids)

    def check_model(self, name: str) -> None:
        check_model(self.manifest, self.url, name)

    def search(self, queries: np.ndarray, k: int, block_docs: int = 65536) -> list[Ranking]:
        """Exact top-k by inner product, streaming `block_docs` documents at a time (bounded memory)."""
        queries = np.asarray(queries, np.float32)
        best_i = np.empty((len(queries), 0), np.int64)
        best_s = np.empty((len(queries), 0), np.float32)
        for start in range(0, len(self), block_docs):
            scores = queries @ self.vectors[start:start + block_docs].T
            i, s = top_k(scores, k)
            best_i = np.concatenate([best_i, i + start], axis=1)
            best_s = np.concatenate([best_s, s], axis=1)
            if best_i.shape[1] > k:
                i, best_s = top_k(best_s, k)
                best_i = np.take_along_axis(best_i, i, 1)
        return [Ranking([self.doc_ids[j] for j in i], s) for i, s in zip(best_i, best_s)]

    def search_hnsw(self, queries: np.ndarray, k: int, m: int = 32, ef_search: int = 128) -> list[Ranking]:
        """Approximate top-k from faiss' HNSW graph (inner product), built on first use."""
        faiss = require("faiss")
        if self._hnsw is None:
            index = faiss.IndexHNSWFlat(self.vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = max(40, 2 * m)
            index.add(self.vectors)
            self._hnsw = index
        self._hnsw.hnsw.efSearch = max(ef_search, k)
        scores, rows = self._hnsw.search(np.asarray(queries, np.float32), min(k, len(self)))
        return [Ranking([self.doc_ids[j] for j in r[r >= 0]], s[r >= 0].astype(np.float32))
                for r, s in zip(rows, scores)]
