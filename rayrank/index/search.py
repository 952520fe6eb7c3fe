"""Top-k documents over a whole index: exact brute-force MaxSim, and IVF candidates + exact MaxSim.

Exact: stream the index in token blocks; per block one matmul against all (a group of) queries'
tokens, a per-document max, a per-query sum, and a running top-k per query. Memory is bounded by
`max_block_bytes` for the similarity block plus k scores per query, whatever the index size.

IVF (PLAID-style): each query token probes its `nprobe` nearest centroids; every document holding
a token assigned to one of them is a candidate. Candidates are ranked in two centroid-only MaxSim
approximations (each document token replaced by its centroid): first pruned to the probed centroids
(computed from the postings already read), then over all of a document's centroids for the best
`pool` of them; the best `candidates` are scored exactly (decompressed vectors), the top k returned.
Postings and vectors stay memory-mapped: a query touches its probed posting lists, its candidates'
centroid lists and their token rows.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from rayrank.index.postings import Postings, build_postings
from rayrank.index.reader import IndexReader, token_rows
from rayrank.ranking import Ranking

CHUNK_BYTES = 768 * 1024  # float32 rows the IVF exact stage widens at a time: they and their scores stay in L2


def chunk_rows(dim: int) -> int:
    """Token rows per exact-stage chunk. Measured on SciFact (384-d): 512 rows ran 1.4x faster than 4,096."""
    return max(64, CHUNK_BYTES // (4 * dim))


def _merge_top(best_s: np.ndarray, best_i: np.ndarray, scores: np.ndarray, index: np.ndarray, k: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k highest of (best, new) per row; best_s/best_i: (q, ≤k), scores: (q, n), index: (n,)."""
    all_s = np.concatenate([best_s, scores], axis=1)
    all_i = np.concatenate([best_i, np.broadcast_to(index, scores.shape)], axis=1)
    if all_s.shape[1] > k:
        top = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        all_s, all_i = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
    return all_s, all_i


def _sorted_hits(reader: IndexReader, best_s: np.ndarray, best_i: np.ndarray) -> list[Ranking]:
    hits = []
    for s, i in zip(best_s, best_i):
        ids = reader.doc_ids.take(i)
        order = sorted(range(len(ids)), key=lambda n: (-s[n], ids[n]))
        hits.append(Ranking([ids[n] for n in order], s[order].astype(np.float32)))
    return hits


def exact_search(reader: IndexReader, queries: Sequence[np.ndarray], k: int,
                 max_block_bytes: int = 256 * 1024**2, max_query_tokens: int = 4096) -> list[Ranking]:
    """Brute-force MaxSim of every query against every indexed document; top k per query.

    Args:
        reader: the index.
        queries: per-query float32 (tokens, dim) embeddings (`scorer.encode_queries`).
        k: documents per query.
        max_block_bytes: bound on the float32 (block tokens × query tokens) similarity matrix.
        max_query_tokens: queries are processed in groups of about this many tokens.
    """
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}.")
    results: list[Ranking] = []
    group: list[np.ndarray] = []
    for q in list(queries) + [None]:
        if q is not None and (not group or sum(len(g) for g in group) + len(q) <= max_query_tokens):
            group.append(q)
            continue
        if group:
            results += _exact_group(reader, group, k, max_block_bytes)
        group = [q] if q is not None else []
    return results


def _exact_group(reader: IndexReader, queries: list[np.ndarray], k: int, max_block_bytes: int) -> list[Ranking]:
    q_all = np.concatenate(queries).astype(np.float32)
    q_starts = np.concatenate(([0], np.cumsum([len(q) for q in queries])[:-1]))
    block_tokens = max(1, max_block_bytes // (4 * len(q_all)))
    best_s = np.empty((len(queries), 0), np.float32)
    best_i = np.empty((len(queries), 0), np.int64)
    for block in reader.blocks(block_tokens):
        similarity = block.vectors @ q_all.T  # (block tokens, all query tokens)
        per_doc = np.maximum.reduceat(similarity, block.starts, axis=0)  # (docs, all query tokens)
        scores = np.add.reduceat(per_doc, q_starts, axis=1).T  # (queries, docs)
        best_s, best_i = _merge_top(best_s, best_i, scores, block.doc_index, k)
    return _sorted_hits(reader, best_s, best_i)


def default_candidates(k: int, documents: int) -> int:
    """Documents scored exactly per query: 8·k, or k·sqrt(documents)/32 where larger (above 65,536).

    Measured at k = 100 (docs/benchmarks/late-interaction.md, indexes.md), Recall@100 of exact at the
    default centroids: 0.989 at 256 candidates on 20,000 synthetic documents, 0.978 at 512 on 100,000,
    SciFact 0.960 at 512 and 0.982 at 768; at 1,000,000 documents 0.86 at 1,600 and 0.97 at 3,072.
    The documents behind each probed centroid grow with the corpus, and so do the candidates needed.
    """
    return max(8 * k, int(k * math.sqrt(documents) / 32))


class IvfSearcher:
    """Candidate generation from centroid postings, centroid interaction, then exact MaxSim.

    Args:
        reader: the index (its codec's centroids and each shard's postings are the inverted file).
        nprobe: centroids probed per query token.
        candidates: documents scored exactly per query (the cost that dominates: one read and matmul
            of their token vectors); default `default_candidates(k, len(reader))` of each search.
        pool: documents ranked by the full centroid interaction, chosen by the pruned one (default
            2 × candidates).

    Recall is bound by the centroid approximation, not by the probes: one or two probes a token already
    reach nearly every true top-100 document, and the finer the centroids (`default_centroids`), the
    fewer candidates the approximation needs to hold them.

    Memory: each shard's postings file is memory-mapped (`rayrank.index.postings`; built in memory
    for shards written before it existed, or read whole from object stores), plus two int32 per
    document mapping postings to the reader's documents.
    """

    def __init__(self, reader: IndexReader, nprobe: int = 2, candidates: int | None = None,
                 pool: int | None = None) -> None:
        if nprobe < 1 or any(n is not None and n < 1 for n in (candidates, pool)):
            raise ValueError(f"nprobe, candidates and pool must be positive, got {nprobe}, {candidates} and {pool}.")
        self.reader, self.nprobe, self.candidates, self.pool = reader, nprobe, candidates, pool
        self.centroids = reader.codec.centroids.astype(np.float32)
        # per shard: its postings, and each postings document's global number (-1: not live)
        self.postings: list[Postings] = []
        self.positions: list[np.ndarray] = []
        self.local = np.empty(len(reader), np.int32)  # global number → postings document of its shard
        for number in range(len(reader.manifest["shards"])):
            postings = Postings(self._postings_array(number))
            mine = np.flatnonzero(reader.shard_of == number)
            to_global = postings.to_positions(reader.offsets[mine], reader.sizes[mine], mine)
            live = np.flatnonzero(to_global >= 0)
            self.local[to_global[live]] = live
            self.postings.append(postings)
            self.positions.append(to_global)
        with warnings.catch_warnings():  # read-only memory maps: torch warns, we never write to them
            warnings.simplefilter("ignore", UserWarning)
            self.tables = [self._table(number) for number in range(len(reader.manifest["shards"]))]
        codec = reader.codec
        self.centroid_table = torch.from_numpy(codec.centroids.astype(np.float32))
        self.lut = torch.from_numpy(np.ascontiguousarray(codec.lut, dtype=np.float32))  # byte → its weights

    def _postings_array(self, number: int) -> np.ndarray:
        arrays = self.reader.arrays(number)
        if "postings" in arrays:
            stored = arrays["postings"]
            return stored.memmap if stored.memmap is not None else np.asarray(stored.rows(0, len(stored)))
        mine = np.flatnonzero(self.reader.shard_of == number)
        return build_postings(self.reader.codes(number), self.reader.offsets[mine], self.reader.sizes[mine],
                              len(self.centroids))

    def _table(self, number: int) -> tuple[torch.Tensor, ...] | None:
        """Shard `number`'s stored rows as tensors over its memory maps (float16 vectors, or codes and
        packed residuals); None where not local: the exact stage then reads through the reader."""
        arrays = self.reader.arrays(number)
        if self.reader.compression == "residual":
            codes, packed = arrays["codes"].memmap, arrays["residuals"].memmap
            if codes is None or packed is None:
                return None
            return (torch.from_numpy(codes.view(np.int16) if codes.dtype == np.uint16 else codes),
                    torch.from_numpy(packed))
        table = self.reader.token_table(number)
        return None if table is None else (torch.from_numpy(table),)

    def search(self, queries: Sequence[np.ndarray], k: int) -> list[Ranking]:
        if k < 1:
            raise ValueError(f"k must be a positive integer, got {k}.")
        threads = torch.get_num_threads()
        # One thread: each query's steps take about a millisecond, less than an OpenMP fork/join over
        # several threads costs, and ten times less when another process holds one of the cores.
        torch.set_num_threads(1)
        try:
            return self._search(queries, k)
        finally:
            torch.set_num_threads(threads)

    def candidates_for(self, k: int) -> int:
        """Documents a search for the top k scores exactly: `candidates`, or the default for k and this index."""
        return self.candidates or default_candidates(k, len(self.reader))

    def _search(self, queries: Sequence[np.ndarray], k: int) -> list[Ranking]:
        hits: list[Ranking] = []
        buffers = _Buffers(self.reader.dim, self.reader.codec)
        candidates = self.candidates_for(k)
        pool = max(self.pool or 2 * candidates, candidates)
        for q in queries:
            q = np.asarray(q, dtype=np.float32)
            cand = self._candidates(q, candidates, pool)
            if not len(cand):
                hits.append(Ranking([], np.empty(0, np.float32)))
                continue
            scores = self._exact(q, cand, buffers)
            chosen = np.arange(len(cand)) if len(cand) <= k else np.argpartition(-scores, k - 1)[:k]
            ids = self.reader.doc_ids.take(cand[chosen])
            order = sorted(range(len(ids)), key=lambda n: (-scores[chosen[n]], ids[n]))  # ties by doc_id, like exact
            hits.append(Ranking([ids[n] for n in order], scores[chosen[order]].astype(np.float32)))
        return hits

    def _exact(self, q: np.ndarray, cand: np.ndarray, buffers: _Buffers) -> np.ndarray:
        """MaxSim of q against the (sorted) candidates from their stored vectors.

        Local shards take a fast path: torch gathers the candidates' rows into reused chunk buffers
        and widens them there (float16), or looks up their centroids and residual weights there
        (residual: one table row per packed byte, then renormalised: `ResidualCodec.decompress`).
        Fresh 50 MB arrays' page faults, and numpy's float16 conversion, cost more than the matmul.
        Otherwise `IndexReader.gather` reads or decompresses them.
        """
        sizes = self.reader.sizes[cand]
        shard_of = self.reader.shard_of[cand]
        query, parts = torch.from_numpy(q), []
        for number in np.unique(shard_of):  # candidates are sorted, so each shard's are contiguous
            mine = shard_of == number
            table = self.tables[number]
            if table is None:
                vectors, _ = self.reader.gather(cand[mine])
                parts.append(torch.from_numpy(q @ vectors.T))
                continue
            rows = torch.from_numpy(token_rows(self.reader.offsets[cand[mine]], sizes[mine]))
            for start in range(0, len(rows), buffers.rows):
                parts.append(self._chunk_scores(query, table, rows[start:start + buffers.rows], buffers))
        similarity = torch.cat(parts, dim=1).numpy()
        # (query tokens, candidate tokens): the per-document max runs along contiguous memory
        return np.maximum.reduceat(similarity, np.cumsum(sizes) - sizes, axis=1).sum(axis=0)

    def _chunk_scores(self, query: torch.Tensor, table: tuple[torch.Tensor, ...], rows: torch.Tensor,
                      b: _Buffers) -> torch.Tensor:
        n, single = len(rows), b.single[:len(rows)]
        if len(table) == 1:
            torch.index_select(table[0], 0, rows, out=b.half[:n])
            single.copy_(b.half[:n])
            # linear, not mm: as fast alone, and far faster when another process shares the cores
            return torch.nn.functional.linear(query, single)
        codes, packed = table
        torch.index_select(codes, 0, rows, out=b.codes[:n])
        # uint16 codes are stored, read as int16: undo the sign
        ids = b.ids[:n]
        ids.copy_(b.codes[:n])
        if codes.dtype == torch.int16:
            ids.bitwise_and_(0xFFFF)
        torch.index_select(self.centroid_table, 0, ids, out=single)
        torch.index_select(packed, 0, rows, out=b.packed[:n])
        byte_ids = b.byte_ids[:n]
        byte_ids.copy_(b.packed[:n])
        torch.index_select(self.lut, 0, byte_ids.view(-1), out=b.weights[:n * b.packed.shape[1]])
        single.add_(b.weights[:n * b.packed.shape[1]].view(n, -1))
        norms = torch.linalg.vector_norm(single, dim=1).clamp_(min=1e-12)
        # normalising the scores: (query tokens × n) divisions instead of (n × dim)
        return torch.nn.functional.linear(query, single).div_(norms)

    def _candidates(self, q: np.ndarray, candidates: int, pool: int) -> np.ndarray:
        """The (sorted) documents to score exactly: probe, pruned interaction, full interaction."""
        centroid_scores = q @ self.centroids.T  # (query tokens, centroids)
        probe = np.unique(np.argpartition(-centroid_scores, min(self.nprobe, centroid_scores.shape[1]) - 1,
                                          axis=1)[:, :self.nprobe])
        found_docs, found_cents = [], []
        for postings, to_global in zip(self.postings, self.positions):
            starts = postings.centroid_starts[probe]
            lengths = postings.centroid_starts[probe + 1] - starts
            docs = to_global[postings.docs[token_rows(starts, lengths)]]
            live = docs >= 0
            found_docs.append(docs[live])
            found_cents.append(np.repeat(probe, lengths)[live])
        docs, cents = np.concatenate(found_docs), np.concatenate(found_cents)
        by_doc = np.argsort(docs, kind="stable")
        docs, cents = docs[by_doc], cents[by_doc]
        firsts = np.flatnonzero(np.diff(docs, prepend=-1))
        docs = docs[firsts].astype(np.int64)
        if len(docs) > pool:
            # PLAID's pruned centroid interaction: only the probed centroids count (a document's other
            # centroids score lower for the probing token), so it needs only the postings just read
            pruned = np.maximum.reduceat(centroid_scores[:, cents], firsts, axis=1).clip(min=0).sum(axis=0)
            docs = np.sort(docs[np.argpartition(-pruned, pool - 1)[:pool]])
        if len(docs) > candidates:
            approx = self._approximate(centroid_scores, docs)
            docs = np.sort(docs[np.argpartition(-approx, candidates - 1)[:candidates]])
        return docs

    def _approximate(self, centroid_scores: np.ndarray, docs: np.ndarray) -> np.ndarray:
        """MaxSim with every document token replaced by its centroid (PLAID's centroid interaction), over
        each document's distinct centroids: a max does not change when a centroid repeats."""
        shard_of = self.reader.shard_of[docs]
        cents, sizes = [], []
        for number in np.unique(shard_of):  # sorted documents: each shard's are contiguous
            postings = self.postings[number]
            local = self.local[docs[shard_of == number]]
            starts = postings.doc_starts[local]
            lengths = postings.doc_starts[local + 1] - starts
            cents.append(postings.centroids[token_rows(starts, lengths)])
            sizes.append(lengths)
        size = np.concatenate(sizes)
        per_centroid = centroid_scores[:, np.concatenate(cents)]  # (query tokens, pairs)
        return np.maximum.reduceat(per_centroid, np.cumsum(size) - size, axis=1).sum(axis=0)


class _Buffers:
    """Chunk buffers of the exact stage, allocated once per search call and reused for every chunk."""

    def __init__(self, dim: int, codec) -> None:
        self.rows = rows = chunk_rows(dim)
        self.half = torch.empty((rows, dim), dtype=torch.float16)
        self.single = torch.empty((rows, dim), dtype=torch.float32)
        width = dim * codec.nbits // 8
        self.codes = torch.empty(rows, dtype=torch.int16 if codec.code_dtype == np.uint16 else torch.int32)
        self.ids = torch.empty(rows, dtype=torch.int64)
        self.packed = torch.empty((rows, width), dtype=torch.uint8)
        self.byte_ids = torch.empty((rows, width), dtype=torch.int64)
        self.weights = torch.empty((rows * width, 8 // codec.nbits), dtype=torch.float32)
