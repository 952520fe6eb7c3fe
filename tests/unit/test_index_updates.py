"""Index updates on hand-built indexes (no Ray, no model): generations, tombstones, replace, compact, leases, drift."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

import rayrank
from rayrank.errors import OutputConflictError
from rayrank.index import IndexReader, IvfSearcher, build, exact_search, update
from rayrank.index.format import read_manifest
from rayrank.io.storage import filesystem
from tests.unit.test_index import brute_force, random_docs, unit, write_index


def queries(n: int = 6, dim: int = 16) -> list[np.ndarray]:
    return [unit(np.random.default_rng(100 + s).standard_normal((4, dim))).astype(np.float32) for s in range(n)]


def manifest(root) -> dict:
    return json.loads((root / "_manifest.json").read_text())


def test_each_update_is_one_generation_with_its_record(tmp_path):
    write_index(tmp_path / "ix", random_docs(30))
    assert "generation" not in manifest(tmp_path / "ix")  # a build is generation 0
    update.append(str(tmp_path / "ix"), ["n0", "n1"], random_docs(2, seed=5))
    update.delete(str(tmp_path / "ix"), ["d1", "nope"])
    update.compact(str(tmp_path / "ix"))
    m = manifest(tmp_path / "ix")
    assert m["generation"] == 3 and [u["kind"] for u in m["updates"]] == ["add", "delete", "compact"]
    assert [u["generation"] for u in m["updates"]] == [1, 2, 3]
    assert m["updates"][1]["deleted"] == 1 and m["updates"][1]["not_found"] == 1
    assert m["docs"] == 31 and len(IndexReader(str(tmp_path / "ix"))) == 31
    assert not (tmp_path / "ix" / "_update").exists()


@pytest.mark.parametrize("compression", ["none", "residual"])
def test_deleted_documents_are_gone_from_every_read_path(tmp_path, compression):
    docs = random_docs(60, seed=2)
    write_index(tmp_path / "ix", docs, compression, nbits=8)
    gone = [f"d{i}" for i in range(0, 60, 3)]
    record = update.delete(str(tmp_path / "ix"), gone)
    assert record == {**record, "deleted": 20, "not_found": 0, "generation": 1}
    reader = IndexReader(str(tmp_path / "ix"))
    live = [i for i in range(60) if i % 3]
    assert sorted(reader.doc_ids) == sorted(f"d{i}" for i in live) and reader.deleted == frozenset(gone)
    assert reader.get(gone[:2]) == [None, None] and gone[0] not in reader
    vectors, sizes = reader.gather(np.arange(len(reader)))
    assert len(vectors) == int(sizes.sum()) == sum(len(docs[i]) for i in live)
    assert sorted(int(i) for b in reader.blocks(7) for i in b.doc_index) == list(range(len(reader)))
    stored = {i: reader.get([f"d{i}"])[0] for i in live}
    ivf = IvfSearcher(reader, nprobe=16, candidates=40)
    for q, exact, approx in zip(queries(), exact_search(reader, queries(), k=10), ivf.search(queries(), 10)):
        best, _ = brute_force(q, [stored[i] for i in live], 10)
        assert exact.doc_ids == [f"d{live[b]}" for b in best]
        assert not set(approx.doc_ids) & set(gone) and set(approx.doc_ids) <= set(reader.doc_ids)


def test_adding_a_present_doc_id_replaces_it(tmp_path):
    write_index(tmp_path / "ix", random_docs(20))
    new = random_docs(3, seed=9)
    m = update.append(str(tmp_path / "ix"), ["d4", "n1", "d4"], new)  # d4 twice in the input: the first wins
    assert m["updates"][-1]["replaced"] == 1 and m["updates"][-1]["docs_added"] == 2 and m["docs"] == 21
    reader = IndexReader(str(tmp_path / "ix"))
    assert np.array_equal(reader.get(["d4"])[0], new[0]) and np.array_equal(reader.get(["n1"])[0], new[1])
    assert reader.doc_ids.count("d4") == 1 and "d4" not in reader.deleted
    hits = exact_search(reader, [new[0].astype(np.float32)], k=1)
    assert hits[0].doc_ids == ["d4"]


@pytest.mark.parametrize("compression", ["none", "residual"])
def test_compact_keeps_every_live_document_and_drops_dead_rows(tmp_path, compression):
    docs = random_docs(50, seed=3)
    write_index(tmp_path / "ix", docs, compression, nbits=4)
    update.append(str(tmp_path / "ix"), ["d0", "n0"], random_docs(2, seed=4))  # replaces d0
    update.delete(str(tmp_path / "ix"), [f"d{i}" for i in range(1, 17)])  # all of shard s0 but d0's old row
    before = IndexReader(str(tmp_path / "ix"))
    stored = dict(zip(before.doc_ids, before.get(before.doc_ids)))
    record = update.compact(str(tmp_path / "ix"))
    assert record["dropped_rows"] == 17 and record["rewritten_shards"] == 0  # s0 wholly dead: dropped
    after = IndexReader(str(tmp_path / "ix"))
    gone = {f"d{i}" for i in range(1, 17)}
    assert sorted(after.doc_ids) == sorted(stored) and after.deleted == gone  # still refused by id
    assert all(np.array_equal(stored[d], v) for d, v in zip(after.doc_ids, after.get(after.doc_ids)))
    m = manifest(tmp_path / "ix")
    assert m["tombstones"]["rows"] == 16 and "s0" not in {s["id"] for s in m["shards"]} and m["docs"] == len(after)
    rows = sum(len(after.arrays(n)["codes"]) for n in range(len(m["shards"])))
    assert rows == int(after.sizes.sum()) == m["total_tokens"]  # no dead row left in any array
    # generation 2 (compacted) may still be open: its files stay; generation 1's tombstones go
    tombstones = lambda: sorted(p.name for p in (tmp_path / "ix" / "tombstones").glob("*"))
    assert tombstones() == ["gen-000002.parquet", "gen-000003.parquet"]
    assert (tmp_path / "ix" / "shards" / "s0.codes.npy").exists()
    update.compact(str(tmp_path / "ix"))  # the next compaction removes them
    assert tombstones() == ["gen-000003.parquet", "gen-000004.parquet"]
    assert not (tmp_path / "ix" / "shards" / "s0.codes.npy").exists()
    again = IndexReader(str(tmp_path / "ix"))
    assert sorted(again.doc_ids) == sorted(stored) and again.deleted == gone
    update.append(str(tmp_path / "ix"), ["d5"], random_docs(1, seed=8))  # a deleted doc_id added back
    assert "d5" in IndexReader(str(tmp_path / "ix")) and "d5" not in IndexReader(str(tmp_path / "ix")).deleted


def test_compact_rewrites_only_shards_with_tombstones(tmp_path):
    write_index(tmp_path / "ix", random_docs(30), shards=3)
    update.delete(str(tmp_path / "ix"), ["d12"])  # shard s1
    update.compact(str(tmp_path / "ix"))
    assert [s["id"] for s in manifest(tmp_path / "ix")["shards"]] == ["s0", "g2-00001", "s2"]


def test_a_reader_keeps_its_generation_while_newer_ones_are_published(tmp_path):
    docs = random_docs(40, seed=6)
    write_index(tmp_path / "ix", docs)
    old = IndexReader(str(tmp_path / "ix"))
    expected = exact_search(old, queries(), k=5)
    update.append(str(tmp_path / "ix"), ["n0", "d0"], random_docs(2, seed=7))
    update.delete(str(tmp_path / "ix"), ["d1", "d2"])
    update.compact(str(tmp_path / "ix"))  # keeps the files generations 2 and 3 read; 0 shares 2's shards
    assert len(old) == 40 and old.generation == 0 and np.array_equal(old.get(["d0"])[0], docs[0])
    got = exact_search(old, queries(), k=5)
    assert [r.doc_ids for r in got] == [r.doc_ids for r in expected]
    new = old.current()
    assert new is not old and new.generation == 3 and "d1" not in new and len(new) == 39
    assert new.current() is new


def test_a_second_writer_is_refused(tmp_path):
    write_index(tmp_path / "ix", random_docs(10))
    fs, root = filesystem(str(tmp_path / "ix"))
    base = read_manifest(fs, root)
    update.take_lease(fs, root, "job-a", "add", base)
    with pytest.raises(OutputConflictError, match="another update in progress or killed .add started"):
        update.delete(str(tmp_path / "ix"), ["d1"])
    assert update.take_lease(fs, root, "job-a", "add", base)["job_id"] == "job-a"  # its own rerun resumes
    update.release(fs, root)
    update.delete(str(tmp_path / "ix"), ["d1"])  # generation 1 published behind a writer that read 0
    with pytest.raises(OutputConflictError, match="moved from generation 0 to 1 while this update ran"):
        update.publish(fs, root, dict(base), 0)


def test_a_lease_left_by_a_published_update_is_cleared(tmp_path):
    write_index(tmp_path / "ix", random_docs(10))
    update.delete(str(tmp_path / "ix"), ["d1"])
    fs, root = filesystem(str(tmp_path / "ix"))
    m = read_manifest(fs, root)
    update.take_lease(fs, root, m["updates"][-1]["job_id"], "delete", m)  # killed after publishing
    assert update.delete(str(tmp_path / "ix"), ["d2"])["generation"] == 2


def test_drift_is_measured_and_retrain_refits_the_centroids(tmp_path):
    docs = random_docs(400, seed=1)  # the seed picks the topics: 300 to build, 100 more of the same
    write_index(tmp_path / "ix", docs[:300], centroids=16)
    build = manifest(tmp_path / "ix")["compression"]["residual_error"]
    same = update.append(str(tmp_path / "ix"), [f"s{i}" for i in range(100)], docs[300:])["drift"]
    assert same["codec_residual_error"] == build and same["ratio"] < 1.1
    other_topics = random_docs(300, seed=3)
    shifted = update.append(str(tmp_path / "ix"), [f"x{i}" for i in range(300)], other_topics)["drift"]
    assert shifted["ratio"] > update.DRIFT_ADVICE and shifted["retrain_advised"]
    reader = IndexReader(str(tmp_path / "ix"))
    stored = dict(zip(reader.doc_ids, reader.get(reader.doc_ids)))
    record = update.compact(str(tmp_path / "ix"), retrain=True)
    assert record["retrained"] and record["drift_before"]["retrain_advised"]
    m = manifest(tmp_path / "ix")
    assert m["compression"]["codec"]["path"] == "codec-000003.npz" and m["drift"] == {}
    assert m["compression"]["residual_error"] < shifted["added_residual_error"]
    after = IndexReader(str(tmp_path / "ix"))
    assert all(np.array_equal(stored[d], v) for d, v in zip(after.doc_ids, after.get(after.doc_ids)))
    assert not np.array_equal(after.codec.centroids, reader.codec.centroids)


def test_funnel_stages_follow_updates_from_the_next_call(tmp_path, tiny_encoder):
    """The stages the Serve search app and the batch funnel run: a long-lived stage sees a delete next call."""
    from rayrank.funnel.config import LateInteractionStage, RerankStage
    from rayrank.funnel.corpus import Corpus
    from rayrank.funnel.stages import LateInteractionRetriever, PairReranker
    from rayrank.ranking import Ranking

    texts = {f"d{i}": t for i, t in enumerate(["ray cluster head", "ray data cluster", "fish in the sea",
                                                "python data model", "cluster of ray nodes", "the sun"])}
    engine = {"model": str(tiny_encoder), "scorer": "late-interaction"}
    scorer = rayrank.Reranker(**engine).scorer
    build.write_index(str(tmp_path / "ix"), list(texts), scorer.encode_documents(list(texts.values())),
                      model_name=rayrank.resolve_model(str(tiny_encoder)).name)
    corpus = Corpus(list(texts), list(texts.values()), pa.table({}), len(texts))
    stages = [LateInteractionRetriever(LateInteractionStage(kind="late-interaction", name="li", k=6, method=method,
                                                            index=str(tmp_path / "ix"), engine=engine), corpus)
              for method in ("exact", "ivf")]
    reranker = PairReranker(RerankStage(kind="rerank", name="rr", k=6, input="li", engine=engine,
                                        index=str(tmp_path / "ix")), corpus)
    everything = [Ranking(list(texts), np.zeros(len(texts), np.float32))]
    assert all("d1" in s.run(["ray cluster"])[0].doc_ids for s in stages)
    assert "d1" in reranker.run(["ray cluster"], everything)[0].doc_ids
    update.delete(str(tmp_path / "ix"), ["d1"])
    for stage in stages:
        assert sorted(stage.run(["ray cluster"])[0].doc_ids) == sorted(set(texts) - {"d1"})
    assert sorted(reranker.run(["ray cluster"], everything)[0].doc_ids) == sorted(set(texts) - {"d1"})
