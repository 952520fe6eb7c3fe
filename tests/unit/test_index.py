"""Index format, codec, pooling, reader and search on hand-built indexes (no Ray, no model)."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayrank.config import ConfigError, IndexJobConfig, RerankJobConfig, parse_config
from rayrank.index import IndexReader, IvfSearcher, ResidualCodec, build, exact_search, pool_tokens
from rayrank.index.build import pack_shard, train_codec
from rayrank.index.format import IndexFormatError, NpyArray
from rayrank.io.storage import filesystem
from rayrank.io.tables import split_duplicates
from rayrank.scoring.late_interaction import maxsim


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float16)


def random_docs(n: int, dim: int = 16, seed: int = 0) -> list[np.ndarray]:
    """Documents whose tokens cluster around a few topics, like real token embeddings do."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((8, dim))
    docs = []
    for _ in range(n):
        m = int(rng.integers(1, 12))
        docs.append(unit(topics[rng.integers(0, 8, size=m)] + 0.4 * rng.standard_normal((m, dim))))
    return docs


def write_index(root, docs: list[np.ndarray], compression: str = "none", nbits: int = 2, shards: int = 3,
                centroids: int = 16) -> IndexReader:
    """An index directory the way `rayrank.jobs.index` lays it out, from arrays (`rayrank.index.build.write_index`)."""
    build.write_index(str(root), [f"d{i}" for i in range(len(docs))], docs, compression, nbits, centroids, shards,
                      model_name="m")
    return IndexReader(str(root))


def brute_force(query: np.ndarray, docs: list[np.ndarray], k: int) -> tuple[list[int], np.ndarray]:
    """The reference: score every document with a plain loop; the k best (document numbers, scores)."""
    scores = [float(sum(max(float(q @ t) for t in d.astype(np.float32)) for q in query)) for d in docs]
    best = sorted(range(len(docs)), key=lambda i: -scores[i])[:k]
    return best, np.array([scores[i] for i in best])


def test_reader_returns_stored_embeddings_by_doc_id(tmp_path):
    docs = random_docs(40)
    reader = write_index(tmp_path / "ix", docs)
    got = reader.get(["d7", "missing", "d39", "d0"])
    assert got[1] is None and "d7" in reader and "missing" not in reader
    for i, emb in zip([7, 39, 0], [got[0], got[2], got[3]]):
        assert emb.dtype == np.float16 and np.array_equal(emb, docs[i])


def test_reader_doc_ids_read_like_a_list(tmp_path):
    """One Arrow array, not a list of Python strings: indexing, slicing, take, iteration and equality as a list."""
    reader = write_index(tmp_path / "ix", random_docs(12), shards=2)
    ids = [f"d{i}" for i in range(12)]
    assert reader.doc_ids == ids and ids == reader.doc_ids and reader.doc_ids != ids[:-1]
    assert reader.doc_ids[3] == "d3" and reader.doc_ids[-1] == "d11" and reader.doc_ids[2:4] == ["d2", "d3"]
    assert reader.doc_ids.take(np.array([5, 0])) == ["d5", "d0"] and list(reader.doc_ids) == ids
    assert reader.doc_ids == IndexReader(str(tmp_path / "ix")).doc_ids and reader.position["d7"] == 7


def test_npy_byte_ranges_match_memory_map(tmp_path):
    array = np.arange(60, dtype=np.float16).reshape(20, 3)
    np.save(tmp_path / "a.npy", array)
    fs, _ = filesystem(str(tmp_path))
    mapped = NpyArray(fs, str(tmp_path / "a.npy"))
    streamed = NpyArray(fs, str(tmp_path / "a.npy"), mmap=False)  # the byte-range path S3 uses
    assert mapped._mmap is not None and streamed._mmap is None
    assert streamed.shape == (20, 3) and len(streamed) == 20
    assert np.array_equal(mapped.rows(4, 9), array[4:9]) and np.array_equal(streamed.rows(4, 9), array[4:9])


@pytest.mark.parametrize("compression", ["none", "residual"])
def test_exact_search_equals_brute_force(tmp_path, compression):
    docs = random_docs(60, seed=1)
    reader = write_index(tmp_path / "ix", docs, compression, nbits=8)
    stored = reader.get(reader.doc_ids)
    queries = [unit(np.random.default_rng(s).standard_normal((5, 16))).astype(np.float32) for s in range(4)]
    # a tiny similarity budget forces many blocks (and queries processed in groups)
    hits = exact_search(reader, queries, k=7, max_block_bytes=600, max_query_tokens=8)
    for q, hit in zip(queries, hits):
        ids, scores = hit.doc_ids, hit.scores
        expected, reference = brute_force(q, stored, 7)
        np.testing.assert_allclose(scores, reference, rtol=1e-5)  # the same top scores, best first
        np.testing.assert_allclose(scores, maxsim(q, reader.get(ids)), rtol=1e-5)  # each id has its own score
        assert list(scores) == sorted(scores, reverse=True)
        assert set(ids[:5]) == {f"d{i}" for i in expected[:5]} or len(set(np.round(reference, 4))) < 7


def test_exact_search_k_larger_than_index_and_bad_k(tmp_path):
    reader = write_index(tmp_path / "ix", random_docs(5), shards=2)
    q = [unit(np.ones((2, 16))).astype(np.float32)]
    assert len(exact_search(reader, q, k=50)[0]) == 5
    with pytest.raises(ValueError, match=re.escape("k must be a positive integer, got 0.")):
        exact_search(reader, q, k=0)


@pytest.mark.parametrize("compression,nbits", [("none", 2), ("residual", 1), ("residual", 2), ("residual", 4)])
def test_ivf_recall_against_exact(tmp_path, compression, nbits):
    docs = random_docs(300, seed=2)
    reader = write_index(tmp_path / "ix", docs, compression, nbits, centroids=32)
    rng = np.random.default_rng(3)
    queries = [docs[i][:3].astype(np.float32) + 0.1 * rng.standard_normal((min(3, len(docs[i])), 16)).astype(
        np.float32) for i in rng.integers(0, 300, size=30)]
    exact = exact_search(reader, queries, k=10)
    narrow = IvfSearcher(reader, nprobe=2, candidates=40).search(queries, k=10)
    wide = IvfSearcher(reader, nprobe=32, candidates=300).search(queries, k=10)
    recall = np.mean([len(set(a.doc_ids) & set(b.doc_ids)) / 10 for a, b in zip(exact, narrow)])
    assert recall >= 0.8, recall
    assert [h.doc_ids for h in wide] == [h.doc_ids for h in exact]  # probing everything is exact
    for a, b in zip(wide, exact):
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)


def test_ivf_default_candidates_follow_k_and_the_index_size(tmp_path, monkeypatch):
    """Without `candidates`, each search scores 8·k documents exactly (and pools twice that), or
    k·sqrt(documents)/32 above 65,536 documents."""
    from rayrank.index import search

    assert [search.default_candidates(100, n) for n in (60, 65_536, 100_000, 1_000_000)] == [800, 800, 988, 3125]
    reader = write_index(tmp_path / "ix", random_docs(60), "none", nbits=4)
    assert IvfSearcher(reader).candidates_for(3) == 24 and IvfSearcher(reader, candidates=7).candidates_for(3) == 7
    seen = []
    original = search.IvfSearcher._candidates

    def spy(self, q, candidates, pool):
        seen.append((candidates, pool))
        return original(self, q, candidates, pool)

    monkeypatch.setattr(search.IvfSearcher, "_candidates", spy)
    query = random_docs(1, seed=3)[0].astype(np.float32)
    IvfSearcher(reader).search([query], k=3)
    IvfSearcher(reader, candidates=7).search([query], k=3)
    IvfSearcher(reader, candidates=7, pool=5).search([query], k=3)
    assert seen == [(24, 48), (7, 14), (7, 7)]
    with pytest.raises(ValueError, match="positive"):
        IvfSearcher(reader, candidates=0)


@pytest.mark.parametrize("compression", ["none", "residual"])
def test_ivf_pruning_keeps_the_best_document(tmp_path, compression):
    """Both centroid interactions prune here (probed documents > pool > candidates), and each query's
    exact best document (the one it is a noisy copy of) survives them with its exact score."""
    rng = np.random.default_rng(5)
    topics = rng.standard_normal((64, 16))  # many topics: documents differ in their centroids too
    docs = [unit(topics[rng.integers(0, 64, size=m)] + 0.3 * rng.standard_normal((m, 16)))
            for m in rng.integers(6, 12, size=400)]
    reader = write_index(tmp_path / "ix", docs, compression, nbits=8, centroids=32)
    queries = [docs[i].astype(np.float32) + 0.05 * rng.standard_normal(docs[i].shape).astype(np.float32)
               for i in rng.integers(0, 400, size=20)]
    ivf = IvfSearcher(reader, nprobe=1, candidates=8, pool=24)
    for q in queries:
        probed = np.unique((q @ ivf.centroids.T).argmax(axis=1))
        reached = np.unique(np.concatenate([to_global[p.docs[p.centroid_starts[c]:p.centroid_starts[c + 1]]]
                                            for p, to_global in zip(ivf.postings, ivf.positions) for c in probed]))
        assert len(reached) > ivf.pool and len(ivf._candidates(q, ivf.candidates, ivf.pool)) == ivf.candidates
    for found, best in zip(ivf.search(queries, k=3), exact_search(reader, queries, k=1)):
        assert found.doc_ids[0] == best.doc_ids[0]
        np.testing.assert_allclose(found.scores[0], best.scores[0], rtol=1e-5)


@pytest.mark.parametrize("compression", ["none", "residual"])
def test_gather_equals_per_document_reads(tmp_path, compression):
    reader = write_index(tmp_path / "ix", random_docs(40), compression, nbits=4)
    positions = np.array([7, 0, 39, 12, 13, 3])  # across shards, out of order
    vectors, sizes = reader.gather(positions)
    expected = reader.get_index(positions)
    assert sizes.tolist() == [len(e) for e in expected] and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, np.concatenate(expected).astype(np.float32), rtol=1e-3, atol=1e-3)


def test_residual_round_trip_error_shrinks_with_bits():
    x = np.concatenate(random_docs(400, dim=32, seed=4))
    errors = []
    for nbits in (1, 2, 4, 8):
        codec = ResidualCodec.train(x, centroids=32, nbits=nbits)
        codes, packed = codec.compress(x)
        assert packed.shape == (len(x), 32 * nbits // 8) and codes.dtype == np.uint16
        back = codec.decompress(codes, packed)
        np.testing.assert_allclose(np.linalg.norm(back, axis=1), 1, atol=1e-5)
        errors.append(float(np.abs(back - x.astype(np.float32)).mean()))
        restored = ResidualCodec.from_bytes(codec.to_bytes())
        assert np.array_equal(restored.decompress(codes, packed), back)
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.01 and errors[1] < 0.1


def test_residual_codec_rejects_bad_settings():
    with pytest.raises(ValueError, match=re.escape("nbits must be one of (1, 2, 4, 8), got 3.")):
        ResidualCodec(np.ones((2, 8)), np.zeros(1), np.zeros(2), 3)
    with pytest.raises(ValueError, match="dim \\* nbits divisible by 8"):
        ResidualCodec(np.ones((2, 3)), np.zeros(1), np.zeros(2), 1)


def test_pool_tokens_keeps_cls_and_reduces_tokens():
    doc = unit(np.random.default_rng(5).standard_normal((27, 16)))
    pooled = pool_tokens(doc, 2)
    assert pooled.dtype == doc.dtype and len(pooled) == 1 + (len(doc) - 1) // 2
    assert np.array_equal(pooled[0], doc[0])
    np.testing.assert_allclose(np.linalg.norm(pooled.astype(np.float32), axis=1), 1, atol=2e-3)
    assert pool_tokens(doc, 1) is doc and len(pool_tokens(doc[:2], 4)) == 2
    with pytest.raises(ValueError, match=re.escape("pool_factor must be a positive integer, got 0.")):
        pool_tokens(doc, 0)


def test_pooling_identical_tokens_loses_nothing():
    token = unit(np.ones((1, 8)))
    doc = np.concatenate([unit(np.arange(8.0)[None]), token, token, token, token])
    query = unit(np.random.default_rng(0).standard_normal((3, 8))).astype(np.float32)
    np.testing.assert_allclose(maxsim(query, [pool_tokens(doc, 4)]), maxsim(query, [doc]), rtol=1e-3)


def test_compressed_index_is_smaller(tmp_path):
    docs = random_docs(100, dim=32, seed=6)
    full = write_index(tmp_path / "a", docs)
    small = write_index(tmp_path / "b", docs, "residual", nbits=2)
    size = {r: sum(e["vector_bytes"] for e in r.manifest["shards"]) for r in (full, small)}
    assert size[small] * 4 < size[full]


def test_missing_or_foreign_index_is_explained(tmp_path):
    with pytest.raises(IndexFormatError, match="has no _manifest.json"):
        IndexReader(str(tmp_path))
    reader = write_index(tmp_path / "ix", random_docs(4), shards=1)
    with pytest.raises(IndexFormatError, match="built with model 'm', but the engine uses 'other'"):
        reader.check_model("other")


def test_split_duplicates_keeps_earliest_doc_in_input_order():
    import pyarrow as pa

    table = pa.table({"doc_id": ["b", "a", "b", "c", "a"], "text": list("vwxyz"), "_source": ["f"] * 5,
                      "_row": [0, 1, 2, 3, 4], "_seq": [0, 1, 2, 3, 4]})
    kept, errors = split_duplicates(table, ("doc_id",))
    assert kept["doc_id"].to_pylist() == ["b", "a", "c"] and kept["text"].to_pylist() == ["v", "w", "y"]
    assert sorted(errors["source_row"].to_pylist()) == [2, 4]
    assert set(errors["reason"].to_pylist()) == {"duplicate doc_id: first seen at row 0 of f",
                                                 "duplicate doc_id: first seen at row 1 of f"}


def test_index_configs():
    config = IndexJobConfig.model_validate({"engine": {"model": "x"}, "compression": "residual", "nbits": 4})
    assert config.engine.scorer == "late-interaction" and config.nbits == 4
    with pytest.raises(ConfigError, match="use scorer: late-interaction"):
        parse_config(IndexJobConfig, {"engine": {"scorer": "cross-encoder"}}, "t")
    with pytest.raises(ConfigError, match="nbits"):
        parse_config(IndexJobConfig, {"nbits": 3}, "t")
    with pytest.raises(ConfigError, match="needs engine.scorer: late-interaction"):
        parse_config(RerankJobConfig, {"index": "ix"}, "t")


def test_shard_files_are_parquet_plus_npy(tmp_path):
    reader = write_index(tmp_path / "ix", random_docs(10), shards=1)
    docs = pq.read_table(tmp_path / "ix" / "shards" / "s0.parquet")
    assert docs.column_names == ["doc_id", "offset", "tokens"]
    flat = np.load(tmp_path / "ix" / "shards" / "s0.npy", mmap_mode="r")
    assert flat.dtype == np.float16 and flat.shape == (int(docs["tokens"].to_numpy().sum()), 16)
    assert len(reader) == 10


def test_index_yaml_configs_validate():
    from pathlib import Path

    from rayrank.config import load_yaml

    paths = sorted((Path(__file__).resolve().parents[2] / "configs").glob("index*.yaml"))
    assert paths
    for path in paths:
        config = parse_config(IndexJobConfig, load_yaml(path), str(path))
        assert config.engine.scorer == "late-interaction"


def test_repack_to_residual_and_pooled(tmp_path):
    from rayrank.index.build import repack

    docs = random_docs(50, dim=32, seed=7)
    source = write_index(tmp_path / "src", docs)
    manifest = repack(source, str(tmp_path / "r8"), "residual", nbits=8, centroids=16)
    small = IndexReader(str(tmp_path / "r8"))
    assert small.compression == "residual" and manifest["compression"]["nbits"] == 8 and len(small) == 50
    for a, b in zip(source.get(source.doc_ids), small.get(source.doc_ids)):
        assert a.shape == b.shape and float((a.astype(np.float32) * b).sum(axis=1).min()) > 0.99
    repack(source, str(tmp_path / "p2"), "none", pool_factor=2, centroids=16)
    pooled = IndexReader(str(tmp_path / "p2"))
    assert pooled.pool_factor == 2 and pooled.sizes.sum() < source.sizes.sum()
    with pytest.raises(ValueError, match="needs an uncompressed, unpooled source"):
        repack(small, str(tmp_path / "x"), "none")


def test_pack_shard_of_no_documents(tmp_path):
    codec, _ = train_codec(random_docs(20), 2, 8)
    for compression in ("none", "residual"):
        data, stats = pack_shard("empty", [], [], codec, compression)
        assert stats == {"docs": 0, "tokens": 0, "vector_bytes": stats["vector_bytes"], "residual_error_sum": 0.0}
        assert pq.read_table(io.BytesIO(data["shards/empty.parquet"])).num_rows == 0


@pytest.mark.parametrize("nbits,pool_factor", [(1, 1), (2, 1), (4, 1), (2, 2)])
def test_ivf_over_every_document_of_a_compressed_index_is_its_exact_search(tmp_path, monkeypatch, nbits,
                                                                           pool_factor):
    """The exact stage decompresses codes and residual bytes in reused chunk buffers (several chunks here):
    with every document a candidate it must give `exact_search` on the same index (ResidualCodec.decompress)."""
    from rayrank.index import search
    from rayrank.index.build import repack

    monkeypatch.setattr(search, "chunk_rows", lambda dim: 7)
    docs = random_docs(120, dim=32, seed=11)
    repack(write_index(tmp_path / "src", docs), str(tmp_path / "ix"), "residual", nbits, pool_factor, centroids=16)
    reader = IndexReader(str(tmp_path / "ix"))
    rng = np.random.default_rng(12)
    queries = [unit(rng.standard_normal((5, 32))).astype(np.float32) for _ in range(6)]
    ivf = IvfSearcher(reader, nprobe=16, candidates=len(reader))
    assert all(len(table) == 2 for table in ivf.tables)  # codes and residuals: the fast path ran
    for found, exact in zip(ivf.search(queries, k=20), exact_search(reader, queries, 20)):
        assert found.doc_ids == exact.doc_ids
        assert float(np.abs(found.scores - exact.scores).max()) <= 1e-5


def test_postings_match_the_documents_the_reader_lists():
    """Postings name documents by their first token row: a dropped document (-1) is not taken for the
    empty one listed at its offset (which has no postings to map)."""
    from rayrank.index.postings import Postings, build_postings

    codes = np.array([3, 1, 3, 0, 2, 2])
    postings = Postings(build_postings(codes, offsets=[0, 2, 2, 5], sizes=[2, 0, 3, 1], centroids=4))
    assert postings.centroid_starts.tolist() == [0, 1, 2, 4, 6]
    assert postings.docs.tolist() == [2, 0, 2, 3, 0, 2]  # centroid 0: doc 2; 1: doc 0; 2: docs 2, 3; 3: docs 0, 2
    assert postings.doc_starts.tolist() == [0, 2, 2, 5, 6] and postings.centroids.tolist() == [1, 3, 0, 2, 3, 2]
    # the reader lists documents 0, 1 (empty) and 3; document 2 was dropped
    listed = postings.to_positions(np.array([0, 2, 5]), np.array([2, 0, 1]), np.array([10, 11, 12]))
    assert listed.tolist() == [10, -1, -1, 12]


def test_ivf_on_an_index_without_postings_files_builds_them(tmp_path):
    """Indexes written before postings files existed: the searcher builds the same postings from the codes."""
    reader = write_index(tmp_path / "ix", random_docs(200, seed=4), centroids=32)
    rng = np.random.default_rng(1)
    queries = [unit(rng.standard_normal((4, 16))).astype(np.float32) for _ in range(5)]
    stored = IvfSearcher(reader, nprobe=2, candidates=30)
    manifest = json.loads((tmp_path / "ix" / "_manifest.json").read_text())
    for shard in manifest["shards"]:
        (tmp_path / "ix" / shard["files"].pop("postings")["path"]).unlink()
    (tmp_path / "ix" / "_manifest.json").write_text(json.dumps(manifest))
    built = IvfSearcher(IndexReader(str(tmp_path / "ix")), nprobe=2, candidates=30)
    for a, b in zip(stored.postings, built.postings):
        assert all(np.array_equal(x, y) for x, y in zip(vars(a).values(), vars(b).values()))
    for a, b in zip(stored.search(queries, 10), built.search(queries, 10)):
        assert a.doc_ids == b.doc_ids and np.array_equal(a.scores, b.scores)
