"""The funnel engine without Ray: config errors, fusion math, BM25, dense search, stage chaining."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from rayrank.config import ConfigError
from rayrank.funnel.bm25 import BM25
from rayrank.funnel.config import load_funnel_config, parse_funnel
from rayrank.funnel.corpus import load_corpus
from rayrank.funnel.fusion import rrf, zscore_fusion, zscores
from rayrank.funnel.stages import Funnel
from rayrank.ranking import Ranking

DOCS = {"d1": "ray clusters run python code", "d2": "fish swim in the sea", "d3": "python is a snake",
        "d4": "the sun gives light to the sea", "d5": "a ray cluster has a head node"}


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": list(DOCS), "text": list(DOCS.values()),
                             "title": ["Ray", "Fish", "", None, "Ray"]}), path)
    return path


def funnel(corpus: Path, *stages: dict) -> dict:
    return {"corpus": {"path": str(corpus)}, "stages": list(stages)}


BM25_STAGE = {"kind": "bm25", "name": "bm25", "k": 4, "stemmer": "none"}


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_funnel(data, "funnel.yaml")
    return str(info.value)


# --- config errors name the key, before any work --------------------------------------------------------

def test_unknown_stage_kind_names_the_stage_and_the_kinds(corpus):
    message = error_of(funnel(corpus, BM25_STAGE, {"kind": "splade", "name": "s", "k": 3}))
    assert "stages.1" in message and "'splade'" in message and "'late-interaction'" in message


def test_rerank_before_any_retrieval_stage(corpus):
    message = error_of(funnel(corpus, {"kind": "rerank", "name": "ce", "k": 3}, BM25_STAGE))
    assert "stages.0.kind: a rerank stage reorders an earlier stage's list, but no retrieval stage" in message


def test_fuse_before_retrieval_names_its_weights(corpus):
    message = error_of(funnel(corpus, {"kind": "fuse", "name": "f", "k": 3, "weights": {"bm25": 1}}, BM25_STAGE))
    assert "stages.0.weights: 'bm25' not an earlier stage (earlier: none)" in message


def test_k_must_not_increase(corpus):
    message = error_of(funnel(corpus, BM25_STAGE, {"kind": "rerank", "name": "ce", "k": 10}))
    assert "stages.1.k: 10 is more than the 4 documents its input 'bm25' passes on" in message
    message = error_of(funnel(corpus, BM25_STAGE, {"kind": "fuse", "name": "f", "k": 5, "weights": {"bm25": 1}}))
    assert "stages.1.k: 5 is more than the 4 documents its inputs pass on" in message


def test_duplicate_names_unknown_keys_and_bad_values(corpus):
    assert "stages.1.name: 'bm25' is used by an earlier stage" in error_of(funnel(corpus, BM25_STAGE, BM25_STAGE))
    assert "stages.0.bm25.k_1: unknown key" in error_of(funnel(corpus, {**BM25_STAGE, "k_1": 1.2}))
    assert "stages.0.bm25.k:" in error_of(funnel(corpus, {**BM25_STAGE, "k": 0}))
    assert "stages: List should have at least 1 item" in error_of(funnel(corpus))
    message = error_of(funnel(corpus, BM25_STAGE, {"kind": "rerank", "name": "r", "k": 2, "index": "idx"}))
    assert "index: reading documents from an index needs engine.scorer: late-interaction" in message


@pytest.mark.parametrize("column", ["doc_id", "text"])
def test_corpus_missing_a_column_fails_naming_the_key(tmp_path, column):
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": ["a"], "text": ["x"]}).drop_columns([column]), path)
    config = tmp_path / "funnel.yaml"
    config.write_text(yaml.safe_dump(funnel(path, BM25_STAGE)))
    with pytest.raises(ConfigError, match=re.escape(f"corpus.{column}: column '{column}' is missing from")):
        load_funnel_config(str(config))


def test_unreadable_corpus_names_corpus_path(tmp_path):
    config = tmp_path / "funnel.yaml"
    config.write_text(yaml.safe_dump(funnel(tmp_path / "nowhere.parquet", BM25_STAGE)))
    with pytest.raises(ConfigError, match="corpus.path: cannot read"):
        load_funnel_config(str(config))


# --- fusion ---------------------------------------------------------------------------------------------

def test_rrf_is_weighted_reciprocal_rank():
    ids, scores = rrf([(["a", "b", "c"], np.zeros(3)), (["c", "a"], np.zeros(2))], [1.0, 2.0], k=10)
    expected = {"a": 1 / 11 + 2 / 12, "b": 1 / 12, "c": 1 / 13 + 2 / 11}
    assert ids == sorted(expected, key=lambda d: -expected[d])
    assert scores == pytest.approx([expected[d] for d in ids])


def test_zscore_fusion_standardises_each_list_and_floors_missing_documents():
    a = (["x", "y", "z"], np.array([10.0, 0.0, -10.0]))   # z: 1.22, 0, -1.22
    b = (["y", "w"], np.array([1000.0, 998.0]))            # the scale of a list does not matter
    ids, scores = zscore_fusion([a, b], [1.0, 0.5])
    za, zb = zscores(a[1]), zscores(b[1])
    expected = {"x": za[0] + 0.5 * zb.min(), "y": za[1] + 0.5 * zb[0], "z": za[2] + 0.5 * zb.min(),
                "w": za.min() + 0.5 * zb[1]}
    assert dict(zip(ids, scores)) == pytest.approx(expected)
    assert list(scores) == sorted(scores, reverse=True)
    assert zscores(np.array([3.0, 3.0])).tolist() == [0.0, 0.0]


# --- BM25 -----------------------------------------------------------------------------------------------

def test_bm25_scores_are_lucene_bm25_by_hand():
    docs = ["fish fish sea", "sea light", "cat"]
    k1, b = 0.9, 0.4
    top, scores = BM25(docs, k1=k1, b=b).search_scored(["fish sea"], k=3)[0]
    avg = 2.0  # document lengths 3, 2, 1

    def weight(tf, length, df):
        idf = np.log(1 + (3 - df + 0.5) / (df + 0.5))
        return idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avg))

    expected = [weight(2, 3, 1) + weight(1, 3, 2), weight(1, 2, 2)]
    assert top.tolist() == [0, 1]  # "cat" shares no term: left out
    assert scores == pytest.approx(expected, rel=1e-5)


def test_bm25_stemming_matches_word_forms():
    docs = ["the runner was running", "fish swim"]
    assert BM25(docs, stemmer="none").search(["runs"], k=2)[0].tolist() == []
    assert BM25(docs, stemmer="english").search(["runs"], k=2)[0].tolist() == [0]


# --- dense search ---------------------------------------------------------------------------------------

def test_dense_exact_search_equals_a_full_sort_and_hnsw_finds_the_same(tmp_path):
    from rayrank.funnel.dense import DenseIndex, top_k

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = DenseIndex.__new__(DenseIndex)
    index.doc_ids, index.vectors, index._hnsw = [f"d{i}" for i in range(500)], vectors, None
    queries = rng.normal(size=(7, 16)).astype(np.float32)
    exact = index.search(queries, 10, block_docs=64)  # blocks smaller than the index: the merge is tested
    full = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    assert [r.doc_ids for r in exact] == [[f"d{i}" for i in row] for row in full]
    assert all(np.all(np.diff(r.scores) <= 0) and r.scores.dtype == np.float32 for r in exact)
    hnsw = index.search_hnsw(queries, 10, m=16, ef_search=200)
    recall = np.mean([len(set(a.doc_ids) & set(b.doc_ids)) / 10 for a, b in zip(exact, hnsw)])
    assert recall >= 0.9
    assert top_k(np.array([[1.0, 3.0, 3.0, 2.0]]), 3)[0].tolist() == [[1, 2, 3]]  # ties by position


# --- stages chained -------------------------------------------------------------------------------------

def test_corpus_joins_titles_and_rejects_bad_rows(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"doc_id": ["a", "b", None, "a", "c"], "text": ["x", "y", "z", "again", ""],
                             "title": ["T", None, "U", "V", "W"]}), path)
    from rayrank.funnel.config import CorpusConfig

    corpus = load_corpus(CorpusConfig(path=str(path)))
    assert corpus.doc_ids == ["a", "b"] and corpus.texts == ["T x", "y"] and corpus.rows_in == 5
    assert sorted(corpus.errors["reason"].to_pylist()) == [
        "doc_id is null", "duplicate doc_id: first seen at row 0 of " + str(path), "text is empty"]


def test_funnel_chains_retrieval_fusion_and_rerank(corpus, tiny_encoder):
    config = parse_funnel(funnel(
        corpus, BM25_STAGE, {"kind": "bm25", "name": "bm25b", "k": 3, "k1": 1.5, "b": 0.9, "stemmer": "none"},
        {"kind": "fuse", "name": "fused", "k": 4, "method": "rrf", "weights": {"bm25": 1, "bm25b": 1}},
        {"kind": "rerank", "name": "li", "k": 2,
         "engine": {"scorer": "late-interaction", "model": str(tiny_encoder)}}), "test")
    f = Funnel(config)
    result = f.run(["python ray cluster", "sea fish", "zebra"])
    assert list(result.rankings) == ["bm25", "bm25b", "fused", "li"] and f.final == "li"
    bm25 = result.rankings["bm25"]
    assert set(bm25[0].doc_ids[:2]) == {"d1", "d5"} and bm25[2].doc_ids == []  # no shared term: empty list
    fused = result.rankings["fused"]
    assert set(fused[0].doc_ids) <= set(bm25[0].doc_ids) | set(result.rankings["bm25b"][0].doc_ids)
    li = result.rankings["li"]
    assert [len(r.doc_ids) for r in li] == [2, 2, 0]
    assert set(li[0].doc_ids) <= set(fused[0].doc_ids)
    assert all(isinstance(r, Ranking) and r.scores.dtype == np.float32 for r in li)
    scorer = f.stages["li"].reranker.scorer
    direct = scorer.score_pairs(["sea fish"] * len(fused[1].doc_ids), f.corpus.texts_of(fused[1].doc_ids)).scores
    assert li[1].doc_ids == Ranking.of(fused[1].doc_ids, direct, 2).doc_ids
    assert set(result.seconds) == set(result.rankings)
    assert f.run([]).rankings == {"bm25": [], "bm25b": [], "fused": [], "li": []}


# --- the llm stage, over real HTTP against the OpenAI-compatible stand-in ---------------------------------

@pytest.fixture
def graded_corpus(tmp_path) -> Path:
    path = tmp_path / "graded.parquet"
    grades = [3, 9, 1, 7, 5, 2]
    pq.write_table(pa.table({"doc_id": [f"g{i}" for i in range(6)],
                             "text": [f"ray cluster {'ray ' * i}grade {g}" for i, g in enumerate(grades)]}), path)
    return path


def llm_funnel(corpus: Path, url: str, model: str, **llm) -> Funnel:
    return Funnel(parse_funnel(funnel(
        corpus, {"kind": "bm25", "name": "bm25", "k": 6, "stemmer": "none"},
        {"kind": "llm", "name": "llm", "k": 3, "url": url, "model": model, "window": 4, "stride": 2,
         "timeout_s": 2.0, **llm}), "test"))


def test_llm_stage_reorders_the_previous_list_through_sliding_windows(graded_corpus):
    from tests.openai_standin import standin

    with standin() as server:
        f = llm_funnel(graded_corpus, server.url, "grader")
        result = f.run(["ray cluster"])
    assert result.rankings["llm"][0].doc_ids == ["g1", "g3", "g4"]  # grades 9, 7, 5: the best bubbled up
    assert result.rankings["llm"][0].scores.tolist() == [6.0, 5.0, 4.0]
    from rayrank.funnel.llm import windows

    assert windows(6, 4, 2) == [(2, 6), (0, 4)]  # bottom up
    assert result.counts["llm"] == {"calls": 2} and len(server.requests) == 2


def test_llm_failure_keeps_the_input_order_and_counts_the_reason(graded_corpus):
    from tests.openai_standin import standin

    with standin() as server:
        f = llm_funnel(graded_corpus, server.url, "error")
        result = f.run(["ray cluster", "ray"])
    bm25 = result.rankings["bm25"]
    assert [r.doc_ids for r in result.rankings["llm"]] == [r.doc_ids[:3] for r in bm25]
    assert result.counts["llm"] == {"calls": 2, "failure:http_status": 2}


def test_llm_stage_before_retrieval_and_bad_settings_name_the_key(corpus):
    llm = {"kind": "llm", "name": "llm", "k": 3, "url": "http://127.0.0.1:9/v1", "model": "m"}
    assert "stages.0.kind: a llm stage reorders" in error_of(funnel(corpus, llm, BM25_STAGE))
    assert "stages.1.llm.url:" in error_of(funnel(corpus, BM25_STAGE, {**llm, "url": "ftp://x"}))
