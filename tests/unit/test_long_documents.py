"""Long documents in the engine: truncation (default, counted) or chunks (best window / union of tokens),
and a user's `max_length` winning over a checkpoint's saved tokenizer limit."""

from __future__ import annotations

import json

import numpy as np
import pytest

import rayrank
from rayrank.config import EngineConfig, parse_config
from rayrank.errors import ConfigError
from rayrank.scoring.base import chunking_of

FILLER = " ".join(["the sun is a big light and the sea is for fish"] * 6)  # 72 tokens, each a vocabulary word
NEEDLE = "ray cluster python data model query document search rank score"


def test_chunking_finds_what_truncation_cuts_off(tiny_cross_encoder):
    long_doc = FILLER + " " + NEEDLE
    truncate = rayrank.Reranker(str(tiny_cross_encoder), max_length=32)
    chunk = rayrank.Reranker(str(tiny_cross_encoder), max_length=32, long_documents="chunk",
                             chunk_overlap_tokens=4, max_chunks_per_doc=16)
    query = "ray cluster"
    cut = truncate.score_pairs([query], [long_doc])
    assert cut.truncated == 1
    best = chunk.score_pairs([query, query], [long_doc, NEEDLE])
    assert best.truncated == 0
    # The long document's score is the best of its windows, each scored as a document of its own.
    windows = chunk.scorer.tokenizer.encode_pairs_chunked([query], [long_doc], 32, chunking_of(chunk.config))
    assert len(windows.owners) > 2 and (windows.encoded.lengths <= 32).all()
    texts = [chunk.scorer.tokenizer._tok.decode(ids[ids.index(3) + 1:-1]) for ids in windows.encoded.input_ids]
    alone = truncate.score_pairs([query] * len(texts), texts)
    assert alone.truncated == 0 and " ".join(texts[-1].split()[-4:]) == " ".join(NEEDLE.split()[-4:])
    np.testing.assert_allclose(best.scores[0], alone.scores.max(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(alone.scores[0], cut.scores[0], rtol=1e-4)  # the first window is what truncation keeps


def test_late_interaction_chunks_score_the_union_of_their_tokens(tiny_encoder):
    long_doc = FILLER + " " + NEEDLE
    chunk = rayrank.Reranker(str(tiny_encoder), scorer="late-interaction", max_length=24,
                             long_documents="chunk", chunk_overlap_tokens=0, max_chunks_per_doc=32)
    full = rayrank.Reranker(str(tiny_encoder), scorer="late-interaction", max_length=24)
    [doc] = chunk.scorer.encode_documents([long_doc])
    windows = chunk.scorer.tokenizer.encode_texts_chunked([long_doc], 24, chunking_of(chunk.config))
    assert (windows.encoded.lengths <= 24).all() and len(windows.owners) >= 4
    assert len(doc) > len(full.scorer.encode_documents([long_doc])[0])  # more than one window's tokens
    query = chunk.scorer.encode_queries(["ray cluster"])[0]
    expected = (query @ doc.astype(np.float32).T).max(axis=1).sum()
    assert chunk.score("ray cluster", [long_doc])[0] == pytest.approx(expected, rel=1e-4)


def test_documents_beyond_max_chunks_are_counted_as_truncated(tiny_encoder):
    reranker = rayrank.Reranker(str(tiny_encoder), scorer="late-interaction", max_length=16,
                                long_documents="chunk", chunk_overlap_tokens=0, max_chunks_per_doc=2)
    assert reranker.score_pairs(["ray", "ray"], [FILLER, "fish"]).truncated == 1


def test_chunk_overlap_must_be_below_chunk_tokens():
    with pytest.raises(ConfigError, match="chunk_overlap_tokens"):
        parse_config(EngineConfig, {"chunk_tokens": 8, "chunk_overlap_tokens": 8}, "test")


def test_relevance_is_in_unit_interval_and_keeps_the_order(tiny_encoder, tiny_cross_encoder):
    docs = ["ray cluster", "fish sea", "python data model", FILLER]
    for reranker in (rayrank.Reranker(str(tiny_encoder), scorer="late-interaction"),
                     rayrank.Reranker(str(tiny_cross_encoder))):
        raw = reranker.score("what is ray", docs)
        relevance = reranker.relevance(["what is ray"] * len(docs), raw)
        assert ((relevance >= 0) & (relevance <= 1)).all()
        assert np.argsort(-relevance, kind="stable").tolist() == np.argsort(-raw, kind="stable").tolist()


def test_cut_documents_keeps_the_first_tokens(tiny_encoder):
    reranker = rayrank.Reranker(str(tiny_encoder), scorer="late-interaction")
    assert reranker.cut_documents(["ray cluster python data", "fish"], 2) == ["ray cluster", "fish"]


def test_user_max_length_wins_over_a_saved_tokenizer_limit(tiny_encoder, tiny_cross_encoder, tmp_path):
    """A checkpoint whose tokenizer was saved at 16 tokens still has 64 positions: max_length 48 is honoured."""
    import shutil

    for model, scorer in ((tiny_cross_encoder, "cross-encoder"), (tiny_encoder, "late-interaction")):
        student = tmp_path / scorer
        shutil.copytree(model, student)
        config = json.loads((student / "tokenizer_config.json").read_text())
        (student / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 16}))
        default = rayrank.Reranker(str(student), scorer=scorer).scorer
        asked = rayrank.Reranker(str(student), scorer=scorer, max_length=48).scorer
        beyond = rayrank.Reranker(str(student), scorer=scorer, max_length=1000).scorer
        length = "max_length" if scorer == "cross-encoder" else "document_max_length"
        assert (getattr(default, length), getattr(asked, length), getattr(beyond, length)) == (16, 48, 64)
        assert asked.score_pairs(["ray"], [FILLER]).truncated == 1


def test_rerank_cli_flags_set_the_engine_length_and_long_documents():
    from rayrank.jobs.rerank import parse_args

    config = parse_args(["in.parquet", "out", "--max-length", "64", "--long-documents", "chunk"])
    assert (config.engine.max_length, config.engine.long_documents) == (64, "chunk")
