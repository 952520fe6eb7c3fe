import random

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from rayrank import InvalidInputError, Reranker, sigmoid
from tests.tiny_models import WORDS


def _texts(n, lo, hi, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


@pytest.fixture(scope="module")
def pairs():
    return _texts(40, 1, 6, 1), _texts(40, 2, 40, 2)


@pytest.fixture(scope="module")
def torch_ce(tiny_cross_encoder):
    return Reranker(str(tiny_cross_encoder), scorer="cross-encoder", max_tokens_per_batch=256)


def test_token_budget_equals_one_pair_per_batch(tiny_cross_encoder, torch_ce, pairs):
    single = Reranker(str(tiny_cross_encoder), max_batch_size=1)
    budget = torch_ce.score_pairs(*pairs).scores
    assert budget.dtype == np.float32 and budget.shape == (40,)
    np.testing.assert_allclose(budget, single.score_pairs(*pairs).scores, atol=1e-5, rtol=0)


def test_shuffled_input_gives_shuffled_scores(torch_ce, pairs):
    scores = torch_ce.score_pairs(*pairs).scores
    perm = np.random.default_rng(3).permutation(40)
    shuffled = torch_ce.score_pairs([pairs[0][i] for i in perm], [pairs[1][i] for i in perm]).scores
    np.testing.assert_allclose(shuffled, scores[perm], atol=1e-5, rtol=0)


def test_equals_sentence_transformers_predict(tiny_cross_encoder, torch_ce, pairs):
    from sentence_transformers import CrossEncoder

    reference = CrossEncoder(str(tiny_cross_encoder)).predict(
        list(zip(*pairs)), activation_fn=torch.nn.Identity(), batch_size=7)
    np.testing.assert_allclose(torch_ce.score_pairs(*pairs).scores, reference, atol=1e-4, rtol=0)


def test_onnx_matches_torch_at_other_shapes(tiny_cross_encoder, torch_ce, pairs, cache_dir):
    # Exported at (2 rows, 16 tokens); scored here at up to 16 rows of up to ~45 tokens.
    onnx = Reranker(str(tiny_cross_encoder), backend="onnx", cache_dir=cache_dir, max_batch_size=16)
    np.testing.assert_allclose(onnx.score_pairs(*pairs).scores, torch_ce.score_pairs(*pairs).scores, atol=1e-3)


def test_int8_keeps_the_ranking(tiny_cross_encoder, pairs, cache_dir):
    fp32 = Reranker(str(tiny_cross_encoder), backend="onnx", cache_dir=cache_dir).score_pairs(*pairs).scores
    int8 = Reranker(str(tiny_cross_encoder), backend="onnx", quantize="int8",
                    cache_dir=cache_dir).score_pairs(*pairs).scores
    # Judge the error against the spread of the scores (what ranking sees) and the order itself.
    assert np.abs(int8 - fp32).mean() < 0.1 * fp32.std()
    assert kendalltau(int8, fp32).statistic > 0.9


def test_int8_needs_onnx(tiny_cross_encoder):
    with pytest.raises(ValueError, match="quantize='int8' needs backend='onnx'"):
        Reranker(str(tiny_cross_encoder), backend="torch", quantize="int8")


def test_empty_input(torch_ce):
    assert torch_ce.score("the query", []).shape == (0,)
    assert len(torch_ce.rank("the query", [])) == 0


@pytest.mark.parametrize(("docs", "message"), [
    (["ok", None], "document at index 1 is null"),
    (["ok", "fine", 3], "document at index 2 is int, not a string"),
    (["", "ok"], "document at index 0 is empty"),
    (["ok", "   "], "document at index 1 is only white space"),
    (["ok", "\u00a0\u2028"], "document at index 1 is only white space"),
])
def test_bad_documents_name_the_position(torch_ce, docs, message):
    with pytest.raises(InvalidInputError, match=message):
        torch_ce.score("the query", docs)


@pytest.mark.parametrize("query", [None, "", 5])
def test_bad_query(torch_ce, query):
    with pytest.raises(InvalidInputError, match="query at index 0"):
        torch_ce.score(query, ["a document"])


def test_truncation_is_counted(torch_ce):
    long_doc = " ".join(["data"] * 200)
    result = torch_ce.score_pairs(["the query", "the query"], [long_doc, "short"])
    assert result.truncated == 1
    # A query longer than the model limit is truncated too, never an error.
    assert torch_ce.score_pairs([long_doc], ["short"]).truncated == 1


def test_rank_api(torch_ce, pairs):
    docs = pairs[1][:10]
    ids = [f"d{i}" for i in range(10)]
    ranked = torch_ce.rank("what is ray", docs, doc_ids=ids, top_n=3, return_documents=True)
    scores = torch_ce.score("what is ray", docs)
    assert ranked.positions.tolist() == np.argsort(-scores, kind="stable")[:3].tolist()
    assert ranked.doc_ids == [ids[i] for i in ranked.positions]
    assert ranked.documents == [docs[i] for i in ranked.positions]
    np.testing.assert_array_equal(ranked.scores, scores[ranked.positions])
    assert ranked.scores.dtype == np.float32 and list(ranked.scores) == sorted(ranked.scores, reverse=True)
    best = ranked.top(1)
    assert (best.doc_ids, best.documents, best.positions.tolist()) == (ranked.doc_ids[:1], ranked.documents[:1],
                                                                        ranked.positions[:1].tolist())
    assert torch_ce.rank("what is ray", docs).doc_ids is None  # no ids given: positions only
    with pytest.raises(InvalidInputError, match="top_n must be a positive integer, got 0"):
        torch_ce.rank("q", docs, top_n=0)
    with pytest.raises(InvalidInputError, match="got 2 doc_ids for 10 documents"):
        torch_ce.rank("q", docs, doc_ids=["a", "b"])


def test_probability_is_sigmoid_of_score():
    np.testing.assert_allclose(sigmoid(np.array([0.0, 2.0], dtype=np.float32)), [0.5, 0.8807971], rtol=1e-6)
