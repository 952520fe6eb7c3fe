"""Pure functions the index job's actors and tasks call: encode, train the codec, pack a shard.

The build is two-phase: (1) encode a sample of documents and train the codec (k-means centroids for
the IVF stage and residual compression, residual buckets); (2) encode every shard and write its
files. Both are plain functions of their inputs, so a rerun recomputes identical files.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from rayrank.index.compress import ResidualCodec, default_centroids, pool_tokens
from rayrank.index.format import DOCS_SCHEMA, npy_bytes, parquet_bytes, shard_files
from rayrank.index.postings import build_postings


def encode(scorer, texts: Sequence[str], pool_factor: int = 1) -> list[np.ndarray]:
    """float16 (tokens, dim) per document: `encode_documents` (normalised, skiplist removed), then pooling."""
    embeddings = scorer.encode_documents(list(texts))
    if pool_factor > 1:
        embeddings = [pool_tokens(e, pool_factor) for e in embeddings]
    return embeddings


def sample_tokens(embeddings: Sequence[np.ndarray], limit: int, seed: int = 0) -> np.ndarray:
    """At most `limit` token vectors drawn uniformly from the documents' tokens (float32)."""
    flat = np.concatenate([e for e in embeddings if len(e)]).astype(np.float32)
    if len(flat) > limit:
        flat = flat[np.sort(np.random.default_rng(seed).choice(len(flat), size=limit, replace=False))]
    return flat


def train_codec(embeddings: Sequence[np.ndarray], nbits: int, centroids: int | None = None,
                corpus_docs: int | None = None, points_per_centroid: int = 256, seed: int = 0
                ) -> tuple[ResidualCodec, dict[str, Any]]:
    """Train on the sample's tokens; k-means sees at most `points_per_centroid` tokens per centroid.

    Without `centroids`, their number follows the corpus's tokens, estimated from the sample's mean
    tokens per document times `corpus_docs` (default: the sample is the corpus).
    """
    total = int(sum(len(e) for e in embeddings))
    if total == 0:
        raise ValueError("cannot train the index codec: the sample documents have no tokens.")
    corpus_tokens = total * max(corpus_docs or 0, len(embeddings)) // len(embeddings)
    k = min(centroids or default_centroids(corpus_tokens, total), total)
    sample = sample_tokens(embeddings, k * points_per_centroid, seed)
    codec = ResidualCodec.train(sample, k, nbits, seed=seed)
    return codec, {"centroids": k, "sample_docs": len(embeddings), "sample_tokens": total,
                   "kmeans_tokens": len(sample)}


def pack_shard(shard_id: str, doc_ids: Sequence[str], embeddings: Sequence[np.ndarray], codec: ResidualCodec,
               compression: str) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Serialise one shard: {relative path: bytes} for its files, and its stats (docs, tokens, bytes)."""
    sizes = np.fromiter((len(e) for e in embeddings), dtype=np.int64, count=len(embeddings))
    offsets = (np.cumsum(sizes) - sizes).astype(np.int64)
    flat = np.concatenate(embeddings).astype(np.float16) if len(embeddings) else \
        np.empty((0, codec.dim), np.float16)
    files = shard_files(shard_id, compression)
    docs = pa.table({"doc_id": pa.array(list(doc_ids), pa.string()), "offset": offsets,
                     "tokens": pa.array(sizes, pa.int32())}, schema=DOCS_SCHEMA)
    codes = codec.codes(flat)
    data = {files["docs"]: parquet_bytes(docs)}
    error = residual_error_sum(codec, flat, codes)
    if compression == "residual":
        _, packed = codec.compress(flat, codes)
        data[files["residuals"]] = npy_bytes(packed)
    else:
        data[files["embeddings"]] = npy_bytes(flat)
    data[files["codes"]] = npy_bytes(codes)
    vector_bytes = sum(len(b) for b in data.values()) - len(data[files["docs"]])
    data[files["postings"]] = npy_bytes(build_postings(codes, offsets, sizes, len(codec.centroids)))
    return data, {"docs": len(doc_ids), "tokens": int(sizes.sum()), "vector_bytes": vector_bytes,
                  "residual_error_sum": error}


def residual_error_sum(codec: ResidualCodec, vectors: np.ndarray, codes: np.ndarray, chunk: int = 65536) -> float:
    """Sum over tokens of 1 - cos(token, its centroid): the codec's fit to these tokens, whose mean, compared
    with the build's, measures how far added documents drift from the centroids (rayrank.index.update)."""
    total = 0.0
    for start in range(0, len(vectors), chunk):
        v = np.asarray(vectors[start:start + chunk], dtype=np.float32)
        c = codec.centroids[np.asarray(codes[start:start + chunk], dtype=np.int64)].astype(np.float32)
        total += float(len(v) - np.einsum("ij,ij->", v, c))
    return total


def write_shard(fs, path: str, shard_id: str, data: dict[str, bytes], compression: str) -> dict[str, dict]:
    """Write a packed shard's files; their manifest entries by role (path, sha256, bytes)."""
    from rayrank.index.format import write_bytes_atomic
    from rayrank.io.storage import join

    return {role: {"path": rel, "sha256": write_bytes_atomic(fs, join(path, rel), data[rel]), "bytes": len(data[rel])}
            for role, rel in shard_files(shard_id, compression).items()}


def repack(source, root: str, compression: str, nbits: int = 2, pool_factor: int = 1, sample_docs: int = 1024,
           centroids: int | None = None, storage_options: dict | None = None) -> dict[str, Any]:
    """Write `source` (an uncompressed, unpooled `IndexReader`) as another setting, without the model.

    Pools, trains the codec on the first `sample_docs` documents and packs shard by shard exactly
    as the index job does after encoding, so a compression setting can be tried in minutes on a
    single machine. One process, not resumable; returns the new manifest.
    """
    import json as _json

    from rayrank.index.format import CODEC, MANIFEST, write_bytes_atomic
    from rayrank.io.storage import filesystem, join, write_json_atomic

    if source.compression != "none" or source.pool_factor != 1:
        raise ValueError("repack needs an uncompressed, unpooled source index (compression none, pool factor 1).")
    started = time.perf_counter()
    fs, path = filesystem(root, storage_options)
    first = [pool_tokens(e, pool_factor) for e in source.get_index(np.arange(min(sample_docs, len(source))))]
    codec, stats = train_codec(first, nbits, centroids, corpus_docs=len(source))
    codec_sha = write_bytes_atomic(fs, join(path, CODEC), codec.to_bytes())
    entries, vector_bytes, tokens = [], 0, 0
    for number, shard in enumerate(source.manifest["shards"]):
        positions = np.flatnonzero(source.shard_of == number)
        embeddings = [pool_tokens(e, pool_factor) for e in source.get_index(positions)]
        data, packed = pack_shard(shard["id"], source.doc_ids.take(positions), embeddings, codec, compression)
        files = write_shard(fs, path, shard["id"], data, compression)
        entries.append({"id": shard["id"], "docs": packed["docs"], "tokens": packed["tokens"], "duplicates": 0,
                        "files": files})
        vector_bytes += packed["vector_bytes"]
        tokens += packed["tokens"]
    manifest = _json.loads(_json.dumps(source.manifest))
    docs = len(source)
    manifest.update(
        shards=entries, total_tokens=tokens, tokens_per_doc=round(tokens / docs, 2) if docs else None,
        bytes_per_doc=round(vector_bytes / docs, 1) if docs else None, output=root,
        timings={"repack_s": round(time.perf_counter() - started, 3)},  # not the source's encoding times
        job_id=f"{source.manifest['job_id']}-repack-{compression}-{nbits}-{pool_factor}",
        repacked_from=source.url,
        compression={"kind": compression, "nbits": nbits if compression == "residual" else None,
                     "pool_factor": pool_factor, "centroids": stats["centroids"],
                     "codec": {"path": CODEC, "sha256": codec_sha, "bytes": fs.size(join(path, CODEC))},
                     "sample_docs": stats["sample_docs"], "kmeans_tokens": stats["kmeans_tokens"]})
    write_json_atomic(manifest, fs, join(path, MANIFEST))
    return manifest


def write_index(root: str, doc_ids: Sequence[str], embeddings: Sequence[np.ndarray], compression: str = "none",
                nbits: int = 2, centroids: int | None = None, shards: int = 1, model_name: str = "",
                sample_docs: int = 1024) -> dict[str, Any]:
    """An index directory from arrays in one process (the index job's layout, without Ray or a model).

    For benchmarks and tests that already hold token embeddings; not resumable. Returns the manifest.
    """
    parts = np.array_split(np.arange(len(doc_ids)), shards)
    return write_index_shards(root, list(embeddings[:sample_docs]), (
        ([doc_ids[i] for i in part], [embeddings[i] for i in part]) for part in parts), compression, nbits,
        centroids, model_name, corpus_docs=len(doc_ids))


def write_index_shards(root: str, sample: Sequence[np.ndarray], shards: Iterable[tuple[Sequence[str],
                       Sequence[np.ndarray]]], compression: str = "none", nbits: int = 2,
                       centroids: int | None = None, model_name: str = "", corpus_docs: int | None = None
                       ) -> dict[str, Any]:
    """`write_index` from shards (doc_ids, embeddings) produced one at a time, so memory holds one shard:
    for corpora larger than memory. The codec is trained on `sample` (documents' token embeddings);
    `corpus_docs`, the documents the shards will hold, sets the default number of centroids."""
    from rayrank.index.format import CODEC, FORMAT_VERSION, MANIFEST, write_bytes_atomic
    from rayrank.io.storage import filesystem, join, write_json_atomic

    fs, path = filesystem(root)
    codec, stats = train_codec(sample, nbits, centroids, corpus_docs)
    write_bytes_atomic(fs, join(path, CODEC), codec.to_bytes())
    entries, error = [], 0.0
    for number, (ids, embeddings) in enumerate(shards):
        shard_id = f"s{number}"
        data, packed = pack_shard(shard_id, ids, embeddings, codec, compression)
        files = write_shard(fs, path, shard_id, data, compression)
        entries.append({"id": shard_id, **packed, "duplicates": 0, "files": files})
        error += packed["residual_error_sum"]
    tokens = sum(e["tokens"] for e in entries)
    docs = sum(e["docs"] for e in entries)
    manifest = {"format_version": FORMAT_VERSION, "job_id": f"write_index-{docs}",
                "model": {"name": model_name}, "dim": codec.dim, "dtype": "float16", "normalized": True,
                "compression": {"kind": compression, "nbits": nbits if compression == "residual" else None,
                                "pool_factor": 1, "centroids": stats["centroids"],
                "residual_error": round(error / tokens, 6) if tokens else None},
                "docs": docs, "total_tokens": tokens, "shards": entries}
    write_json_atomic(manifest, fs, join(path, MANIFEST))
    return manifest
