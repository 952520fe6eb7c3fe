"""The semantic query cache on its own (no Ray): keys, thresholds, eviction, and a real encoder."""

from __future__ import annotations

import numpy as np
import pytest

import rayrank
from rayrank.cache import QueryCache, documents_key, mean_pooled


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_documents_key_ignores_order_and_duplicates_but_not_content_or_variant():
    assert documents_key(["a", "b"]) == documents_key(["b", "a", "a"])
    assert documents_key(["a", "b"]) != documents_key(["a", "bb"])
    assert documents_key(["ab", "c"]) != documents_key(["a", "bc"])  # texts are length-delimited
    assert documents_key(["a"], variant="truncate=8") != documents_key(["a"])


def test_near_duplicate_hits_only_above_threshold_and_only_for_the_same_documents():
    cache = QueryCache(threshold=0.95)
    key = documents_key(["x", "y"])
    cache.store(key, unit(1, 0, 0), {"x": 2.0, "y": 1.0})
    assert cache.lookup(key, unit(1, 0.1, 0)) == {"x": 2.0, "y": 1.0}  # cosine 0.995
    assert cache.lookup(key, unit(1, 0.5, 0)) is None  # cosine 0.894
    assert cache.lookup(documents_key(["x"]), unit(1, 0, 0)) is None
    assert (cache.hits, cache.misses) == (1, 2)


def test_the_closest_cached_query_wins():
    cache = QueryCache(threshold=0.5)
    key = documents_key(["d"])
    cache.store(key, unit(1, 0), {"d": 1.0})
    cache.store(key, unit(0, 1), {"d": 2.0})
    assert cache.lookup(key, unit(0.2, 1)) == {"d": 2.0}


def test_eviction_keeps_at_most_max_entries_starting_with_the_least_recently_used_set():
    cache = QueryCache(threshold=0.99, max_entries=2)
    a, b, c = documents_key(["a"]), documents_key(["b"]), documents_key(["c"])
    cache.store(a, unit(1, 0), {"a": 1.0})
    cache.store(b, unit(1, 0), {"b": 1.0})
    assert cache.lookup(a, unit(1, 0)) is not None  # a is now the most recently used
    cache.store(c, unit(1, 0), {"c": 1.0})
    assert len(cache) == 2
    assert cache.lookup(b, unit(1, 0)) is None and cache.lookup(a, unit(1, 0)) is not None


@pytest.mark.parametrize(("threshold", "entries"), [(0.0, 1), (1.5, 1), (0.9, 0)])
def test_bad_settings_are_refused(threshold, entries):
    with pytest.raises(ValueError):
        QueryCache(threshold, entries)


def test_mean_pooled_query_vectors_from_a_real_encoder(tiny_encoder):
    scorer = rayrank.Reranker(str(tiny_encoder), scorer="late-interaction").scorer
    vectors = mean_pooled(scorer.encode_queries(["ray cluster", "RAY   cluster", "fish sea light"]))
    assert vectors.shape == (3, scorer.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > 0.9999 > vectors[0] @ vectors[2]
