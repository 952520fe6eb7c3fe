"""Stanford ColBERT and PyLate ModernBERT checkpoints score as the ColBERT recipe says, on every backend.

The reference is the recipe written out with plain transformers/torch (CI has no PyLate): encoder →
linear → L2-normalise; the marker right after [CLS]; queries cut to query_length - 1 tokens, the marker
inserted, padded with [MASK] (unattended) to query_length, every position kept; documents cut to
document_length - 1, the marker inserted, punctuation dropped. `bench/pylate_parity.py` checks the same
checkpoints against PyLate itself.
"""

from __future__ import annotations

import json
import re
import shutil
import string
from dataclasses import asdict

import numpy as np
import pytest
import torch

from rayrank import Reranker
from rayrank.errors import UnsupportedModelError
from rayrank.index import build
from rayrank.scoring.late_interaction import maxsim
from tests.tiny_colbert import PYLATE_CONFIG, STANFORD_METADATA, make_pylate_modernbert, make_stanford_colbert

QUERIES = ["what is ray", "  Fish of the SEA?  ", "how does a ray cluster rank a query for the new big model fast"]
DOCUMENTS = ["ray cluster python data", "the sea , the fish ; the sun !", "  A small cat. A big dog.  ",
             " ".join(["model", "query", "document", "search", "rank"] * 12)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("colbert-formats")
    return {"stanford": make_stanford_colbert(root / "stanford"),
            "modernbert": make_pylate_modernbert(root / "modernbert")}


def _reference_model(layout: str, path):
    """Encoder, projection weight, markers and lengths, read the way each layout documents them."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if layout == "stanford":  # HF_ColBERT: BertModel under `bert.`, `linear` beside it
        state = load_file(str(path / "model.safetensors"))
        encoder = BertModel(AutoConfig.from_pretrained(str(path)))
        encoder.load_state_dict({k.removeprefix("bert."): v for k, v in state.items() if k.startswith("bert.")})
        weight, meta = state["linear.weight"], STANFORD_METADATA
        markers, lengths = (meta["query_token_id"], meta["doc_token_id"]), (meta["query_maxlen"], meta["doc_maxlen"])
    else:  # PyLate: the encoder at the root, 1_Dense beside it
        encoder = AutoModel.from_pretrained(str(path))
        weight = load_file(str(path / "1_Dense" / "model.safetensors"))["linear.weight"]
        markers = (PYLATE_CONFIG["query_prefix"], PYLATE_CONFIG["document_prefix"])
        lengths = (PYLATE_CONFIG["query_length"], PYLATE_CONFIG["document_length"])
    return tokenizer, encoder.eval(), weight, [tokenizer.convert_tokens_to_ids(m) for m in markers], lengths


def reference(layout: str, path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    tokenizer, encoder, weight, (q_marker, d_marker), (q_len, d_len) = _reference_model(layout, path)
    skip = {tokenizer.convert_tokens_to_ids(p) for p in string.punctuation if p in tokenizer.get_vocab()}

    def embed(text: str, marker: int, length: int, query: bool) -> np.ndarray:
        ids = tokenizer(text.strip(), truncation=True, max_length=length - 1)["input_ids"]
        ids = ids[:1] + [marker] + ids[1:]
        mask = [1] * len(ids)
        if query:
            mask += [0] * (length - len(ids))
            ids += [tokenizer.mask_token_id] * (length - len(ids))
        with torch.no_grad():
            hidden = encoder(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([mask])).last_hidden_state[0]
        out = torch.nn.functional.normalize(hidden @ weight.T, dim=-1).numpy()
        return out if query else out[[i for i, t in enumerate(ids) if t not in skip]]

    return ([embed(q, q_marker, q_len, True) for q in QUERIES],
            [embed(d, d_marker, d_len, False) for d in DOCUMENTS])


@pytest.fixture(scope="module")
def references(checkpoints):
    return {layout: reference(layout, path) for layout, path in checkpoints.items()}


@pytest.mark.parametrize("layout", ["stanford", "modernbert"])
@pytest.mark.parametrize("backend", ["torch", "onnx", "openvino", "auto"])
def test_embeddings_and_scores_equal_the_recipe(checkpoints, references, cache_dir, layout, backend):
    # dtype float32: auto may otherwise pick bf16, which is near-exact for ranking but not within 1e-4
    reranker = Reranker(str(checkpoints[layout]), scorer="late-interaction", backend=backend, dtype="float32",
                        cache_dir=cache_dir)
    scorer = reranker.scorer
    want_q, want_d = references[layout]
    got_q = scorer.encode_queries(QUERIES)
    got_d = scorer.encode_documents(DOCUMENTS, np.float32)
    assert [q.shape for q in got_q] == [(12, 16)] * 3  # [MASK]-augmented to query length, projected 32 → 16
    assert [d.shape for d in got_d] == [w.shape for w in want_d] and got_d[3].shape == (24, 16)
    for got, want in zip(got_q + got_d, want_q + want_d):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert {d.dtype for d in scorer.encode_documents(DOCUMENTS)} == {np.dtype(np.float16)}  # what indexes store
    queries = [q for q in QUERIES for _ in DOCUMENTS]
    want = np.concatenate([maxsim(q, want_d) for q in want_q])
    np.testing.assert_allclose(np.concatenate([maxsim(q, got_d) for q in got_q]), want, atol=1e-4, rtol=0)
    # score_pairs scores float32 documents: the recipe's MaxSim (an index's float16 copy is what rounds)
    np.testing.assert_allclose(reranker.score_pairs(queries, DOCUMENTS * 3).scores, want, atol=1e-4, rtol=0)


def test_conventions_come_from_the_checkpoint_and_reach_the_index_manifest(checkpoints):
    """The index job writes `asdict(scorer.conventions)`, `dim` and both lengths into `_manifest.json`."""
    stanford = Reranker(str(checkpoints["stanford"]), scorer="late-interaction", backend="torch").scorer
    modern = Reranker(str(checkpoints["modernbert"]), scorer="late-interaction", backend="torch").scorer
    recorded = json.loads(json.dumps(asdict(stanford.conventions)))
    assert recorded == {"layout": "stanford", "query_prefix": "[unused0]", "document_prefix": "[unused1]",
                        "query_length": 12, "document_length": 24, "do_query_expansion": True,
                        "attend_to_expansion_tokens": False, "skiplist_words": list(string.punctuation),
                        "lowercase": False}
    assert (modern.conventions.layout, modern.conventions.query_prefix) == ("pylate", "[Q] ")
    for scorer in (stanford, modern):
        assert (scorer.dim, scorer.query_max_length, scorer.document_max_length) == (16, 12, 24)
        assert {e.shape[1] for e in build.encode(scorer, DOCUMENTS)} == {16}


def _variant(source, tmp_path, name):
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, **changes}))


def _refused(path, message: str) -> None:
    with pytest.raises(UnsupportedModelError, match=re.escape(message)):
        Reranker(str(path), scorer="late-interaction", backend="torch")


def test_stanford_checkpoint_without_its_projection_or_lengths_is_refused(checkpoints, tmp_path):
    _refused(make_stanford_colbert(tmp_path / "no-linear", linear=False),
             "an HF_ColBERT checkpoint without linear.weight in its main weights")
    no_lengths = _variant(checkpoints["stanford"], tmp_path, "no-lengths")
    (no_lengths / "artifact.metadata").unlink()
    _refused(no_lengths, "needs artifact.metadata with query_maxlen and doc_maxlen")
    l2 = _variant(checkpoints["stanford"], tmp_path, "l2")
    _edit_json(l2 / "artifact.metadata", similarity="l2")
    _refused(l2, "ColBERT similarity 'l2'; rayrank scores cosine MaxSim only.")


def test_unknown_late_interaction_layouts_are_refused(checkpoints, tmp_path):
    renamed = _variant(checkpoints["stanford"], tmp_path, "renamed")
    _edit_json(renamed / "config.json", architectures=["BertModel"])  # linear.weight would be skipped
    _refused(renamed, "unknown late-interaction layout (a ColBERT projection outside modules.json)")
    custom = _variant(checkpoints["stanford"], tmp_path, "custom")
    _edit_json(custom / "config.json", architectures=["JinaColBERTModel"])
    _refused(custom, "unknown late-interaction layout (JinaColBERTModel); rayrank scores late interaction with")
    tanh = _variant(checkpoints["modernbert"], tmp_path, "tanh")
    _edit_json(tanh / "1_Dense" / "config.json", activation_function="torch.nn.modules.activation.Tanh")
    _refused(tanh, "Dense with activation torch.nn.modules.activation.Tanh and use_residual=False")
    no_marker = _variant(checkpoints["modernbert"], tmp_path, "no-marker")
    _edit_json(no_marker / "config_sentence_transformers.json", query_prefix="[query] ")
    _refused(no_marker, "marker '[query] ' is not a token of the checkpoint's tokenizer")
