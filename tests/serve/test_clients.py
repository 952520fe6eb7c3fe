"""The client libraries RAG teams already use, unchanged, against the running app over real HTTP with an
API key: the `cohere` SDK (`Client` -> /v1/rerank, `ClientV2` -> /v2/rerank), LangChain's `CohereRerank`
(ClientV2) and LlamaIndex's `TextEmbeddingsInference` reranker (TEI /rerank). Each asserts the order and
the scores against the in-process engine. The snippets are the serving guide's (docs/guides/serving.md)."""

from __future__ import annotations

import numpy as np
import pytest

import rayrank
from tests.serve.conftest import API_KEYS, running, tiny_args

QUERY = "what is a ray cluster"
DOCS = ["ray cluster head node", "fish in the sea", "python data model", "the sun is a big light"]
KEY = API_KEYS[0]


@pytest.fixture(scope="module")
def url(ray_cluster, tiny_encoder):
    args = tiny_args(tiny_encoder, "late-interaction", served_model_name="rayrank-minilm",
                     auth={"api_keys_env": "RAYRANK_TEST_KEYS"})
    with running(args) as base:
        yield base


@pytest.fixture(scope="module")
def expected(tiny_encoder):
    """(order best first, relevance scores best first) from the engine in this process."""
    engine = rayrank.Reranker(str(tiny_encoder), scorer="late-interaction")
    relevance = engine.relevance([QUERY] * len(DOCS), engine.score(QUERY, DOCS))
    order = np.argsort(-relevance, kind="stable")
    return order.tolist(), relevance[order]


def check(indices, scores, expected, top_n=len(DOCS)):
    order, relevance = expected
    assert list(indices) == order[:top_n]
    np.testing.assert_allclose(scores, relevance[:top_n], rtol=1e-4)
    assert all(0 <= s <= 1 for s in scores)


def test_cohere_client_v1(url, expected):
    import cohere

    co = cohere.Client(api_key=KEY, base_url=url)
    response = co.rerank(model="rayrank-minilm", query=QUERY, documents=DOCS, top_n=3, return_documents=True)
    check([r.index for r in response.results], [r.relevance_score for r in response.results], expected, top_n=3)
    assert [r.document.text for r in response.results] == [DOCS[r.index] for r in response.results]


def test_cohere_client_v2_with_max_tokens_per_doc(url, expected):
    import cohere

    co = cohere.ClientV2(api_key=KEY, base_url=url)
    response = co.rerank(model="rayrank-minilm", query=QUERY, documents=DOCS, top_n=2)
    check([r.index for r in response.results], [r.relevance_score for r in response.results], expected, top_n=2)
    # Cut to their first token, "ray ...", "fish ...", "python ...", "the ..." score as those words alone.
    cut = co.rerank(model="rayrank-minilm", query=QUERY, documents=DOCS, max_tokens_per_doc=1)
    alone = co.rerank(model="rayrank-minilm", query=QUERY, documents=[d.split()[0] for d in DOCS])
    assert [(r.index, round(r.relevance_score, 5)) for r in cut.results] == \
        [(r.index, round(r.relevance_score, 5)) for r in alone.results]


def test_cohere_client_refused_without_the_key(url):
    import cohere

    with pytest.raises(cohere.UnauthorizedError):
        cohere.ClientV2(api_key="not-a-key", base_url=url).rerank(model="rayrank-minilm", query=QUERY,
                                                                  documents=DOCS)


def test_langchain_cohere_rerank(url, expected):
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    reranker = CohereRerank(model="rayrank-minilm", cohere_api_key=KEY, base_url=url, top_n=3)
    kept = reranker.compress_documents([Document(page_content=d) for d in DOCS], QUERY)
    order, relevance = expected
    assert [d.page_content for d in kept] == [DOCS[i] for i in order[:3]]
    np.testing.assert_allclose([d.metadata["relevance_score"] for d in kept], relevance[:3], rtol=1e-4)


def test_llama_index_tei_rerank(url, expected):
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

    reranker = TextEmbeddingInference(base_url=url, top_n=3, auth_token=f"Bearer {KEY}")
    nodes = reranker.postprocess_nodes([NodeWithScore(node=TextNode(text=d), score=0.0) for d in DOCS],
                                       query_bundle=QueryBundle(QUERY))
    order, relevance = expected
    assert [n.node.text for n in nodes] == [DOCS[i] for i in order[:3]]
    np.testing.assert_allclose([n.score for n in nodes], relevance[:3], rtol=1e-4)
