"""Every encoder family scores what sentence-transformers scores, on every backend (tiny random checkpoints)."""

import numpy as np
import pytest
import torch

from rayrank import Reranker
from tests.tiny_families import FAMILIES, make_family_cross_encoder

# Lengths from a handful of tokens to past every tiny model's limit (the last pair is truncated): position
# offsets, segment ids, padding inside a batch and ModernBERT's 16-token local window all show in them.
PAIRS = [("ray", "the sea"), ("what is a fast search rank score", "cat dog fish " * 6),
         ("python data model", "how to run a big data cluster with ray and python, fast!"),
         ("who was the old cat", "the dog was big and the fish was small " * 2), ("sun light", "the old sea " * 40)]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """(family, checkpoint, sentence-transformers' raw logits for PAIRS)."""
    from sentence_transformers import CrossEncoder

    path = make_family_cross_encoder(request.param, tmp_path_factory.mktemp(request.param))
    logits = CrossEncoder(str(path), device="cpu").predict(PAIRS, activation_fn=torch.nn.Identity())
    return request.param, path, logits


@pytest.mark.parametrize("backend", ["torch", "onnx", "openvino", "auto"])
def test_matches_sentence_transformers(family, backend, cache_dir):
    _, path, expected = family
    reranker = Reranker(str(path), scorer="cross-encoder", backend=backend, device="cpu", dtype="float32",
                        cache_dir=cache_dir)
    result = reranker.score_pairs(*zip(*PAIRS))
    assert result.truncated == 1
    np.testing.assert_allclose(result.scores, expected, atol=1e-4, rtol=0)


def test_torch_runs_sdpa_where_the_family_has_it(family):
    name, path, _ = family
    model = Reranker(str(path), backend="torch", device="cpu").scorer.backend.module.model
    assert model.config._attn_implementation == ("eager" if name == "deberta-v2" else "sdpa")
