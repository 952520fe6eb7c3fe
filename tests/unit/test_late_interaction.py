import numpy as np
import pytest

from rayrank import Reranker
from rayrank.scoring.late_interaction import maxsim


def test_maxsim_hand_computed():
    query = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    doc_a = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float16)  # q0 best 1.0, q1 best 0.8
    doc_b = np.array([[0.0, 1.0]], dtype=np.float16)              # q0 best 0.0, q1 best 1.0
    np.testing.assert_allclose(maxsim(query, [doc_a, doc_b]), [1.8, 1.0], atol=1e-3)


def test_maxsim_equals_reference_loop():
    rng = np.random.default_rng(0)
    query = rng.normal(size=(5, 8)).astype(np.float32)
    docs = [rng.normal(size=(n, 8)).astype(np.float32) for n in (1, 7, 3, 12)]
    expected = [sum(max(float(q @ t) for t in d) for q in query) for d in docs]
    np.testing.assert_allclose(maxsim(query, docs), expected, rtol=1e-5, atol=1e-4)
    assert maxsim(query, []).shape == (0,)
    with pytest.raises(ValueError, match="document 1 has no token embeddings"):
        maxsim(query, [docs[0], np.zeros((0, 8), dtype=np.float32)])


@pytest.fixture(scope="module")
def plain(tiny_encoder):
    # torch fp32 named: auto may pick bf16, which the 1e-5 comparisons below cannot hold
    return Reranker(str(tiny_encoder), scorer="late-interaction", backend="torch")


def test_documents_are_normalised_float16_without_punctuation(plain):
    scorer = plain.scorer
    docs = ["ray , cluster . data !", "the model"]
    embeddings = scorer.encode_documents(docs)
    assert [e.dtype for e in embeddings] == [np.float16, np.float16]
    # [CLS] ray cluster data [SEP]: three punctuation tokens skipped; [CLS] the model [SEP].
    assert [e.shape for e in embeddings] == [(5, 32), (4, 32)]
    np.testing.assert_allclose(np.linalg.norm(embeddings[0].astype(np.float32), axis=1), 1.0, atol=2e-3)


def test_plain_queries_match_sentence_transformers_token_embeddings(tiny_encoder, plain):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_encoder), device="cpu")
    reference = model.encode("what is a ray cluster", output_value="token_embeddings", convert_to_numpy=True)
    reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    (ours,) = plain.scorer.encode_queries(["what is a ray cluster"])
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_pair_scores_are_maxsim_of_encodings(plain):
    queries = ["what is ray", "what is ray", "fish"]
    docs = ["ray cluster python", "the sea fish", "fish of the sea"]
    scores = plain.score_pairs(queries, docs).scores
    q = plain.scorer.encode_queries(["what is ray", "fish"])
    d = plain.scorer.encode_documents(docs, dtype=np.float32)
    expected = np.concatenate([maxsim(q[0], d[:2]), maxsim(q[1], d[2:])])
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    perm = [2, 0, 1]
    np.testing.assert_allclose(plain.score_pairs([queries[i] for i in perm], [docs[i] for i in perm]).scores,
                               scores[perm], atol=1e-5)


def test_colbert_conventions(tiny_colbert):
    colbert = Reranker(str(tiny_colbert), scorer="late-interaction").scorer
    conv = colbert.conventions
    assert (conv.query_prefix, conv.query_length, conv.document_length) == ("[unused0]", 12, 48)
    (query,) = colbert.encode_queries(["what is ray"])
    assert query.shape == (12, 16)  # mask-padded to query_length, projected 32 → 16
    encoded = colbert.tokenizer.encode_texts(["what is ray"], 12, prefix=conv.query_prefix, pad_to=12)
    ids = encoded.input_ids[0]
    assert ids[1] == colbert.tokenizer.vocab["[unused0]"]  # marker right after [CLS]
    assert ids[-1] == colbert.tokenizer.mask_id and encoded.attention_mask[0][-1] == 0
    (doc,) = colbert.encode_documents([" ".join(["data"] * 100)])
    assert doc.shape == (48, 16)  # document_length from the checkpoint


def test_onnx_embeddings_match_torch(tiny_colbert, cache_dir):
    docs = ["ray cluster python data", "the sea", " ".join(["model"] * 30)]
    torch_docs = Reranker(str(tiny_colbert), scorer="late-interaction", backend="torch").scorer.encode_documents(docs)
    onnx_docs = Reranker(str(tiny_colbert), scorer="late-interaction", backend="onnx",
                         cache_dir=cache_dir).scorer.encode_documents(docs)
    for a, b in zip(torch_docs, onnx_docs):
        assert a.shape == b.shape
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-3)
