"""A late-interaction index: per-document token embeddings computed once, read by rerank and search.

`format` (on-disk layout, manifest), `compress` (residual codec, token pooling), `build` (what the
index job's actors call), `reader` (memory-mapped / streamed access by doc_id), `postings` (a shard's
inverted file), `search` (exact MaxSim over the whole index, IVF candidate generation), `update`
(add, delete, compact). No module here imports ray.
"""

from rayrank.index.compress import ResidualCodec, pool_tokens
from rayrank.index.reader import IndexReader, score_from_index
from rayrank.index.search import IvfSearcher, exact_search

__all__ = ["IndexReader", "IvfSearcher", "ResidualCodec", "exact_search", "pool_tokens", "score_from_index"]
