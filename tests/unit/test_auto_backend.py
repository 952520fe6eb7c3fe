"""OpenVINO and bf16 agree with torch fp32; `backend="auto"` measures once, caches, records, never quantizes."""

import json
import logging

import numpy as np
import pytest

from rayrank import EngineConfig, Reranker
from rayrank.backends import auto
from rayrank.reranker import resolve_engine

PAIRS = (["ray cluster", "sea", "fast search rank", "big data"] * 3,
         ["ray scales python data", "the sea and the sun", " ".join(["model"] * 40), "cat dog fish",
          "how to run a big data cluster", "rank", "a b c d e f g", "python", "search engines rank documents",
          "sun", "data data data", "clusters of machines"])

openvino = pytest.importorskip("openvino")


def _scores(model, **settings) -> np.ndarray:
    return Reranker(str(model), max_tokens_per_batch=128, **settings).score_pairs(*PAIRS).scores


@pytest.fixture(scope="module")
def fp32(tiny_cross_encoder):
    return _scores(tiny_cross_encoder, backend="torch", dtype="float32")


def test_openvino_fp32_matches_torch(tiny_cross_encoder, cache_dir, fp32):
    reranker = Reranker(str(tiny_cross_encoder), backend="openvino", dtype="float32", cache_dir=cache_dir)
    assert reranker.scorer.backend.name == "openvino" and reranker.scorer.backend.dtype == "float32"
    np.testing.assert_allclose(reranker.score_pairs(*PAIRS).scores, fp32, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_bf16_stays_close_to_fp32(tiny_cross_encoder, cache_dir, fp32, backend):
    # bf16 keeps 8 bits of mantissa: scores move by about 1e-2 of their range, never more.
    bf16 = _scores(tiny_cross_encoder, backend=backend, dtype="bfloat16", cache_dir=cache_dir)
    assert np.abs(bf16 - fp32).max() <= 2e-2 * np.abs(fp32).max()


def test_openvino_late_interaction_matches_torch(tiny_colbert, cache_dir):
    docs = PAIRS[1]
    torch_docs = Reranker(str(tiny_colbert), scorer="late-interaction", backend="torch").scorer.encode_documents(docs)
    ov_docs = Reranker(str(tiny_colbert), scorer="late-interaction", backend="openvino", dtype="float32",
                       cache_dir=cache_dir).scorer.encode_documents(docs)
    for a, b in zip(torch_docs, ov_docs):
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-3)


def test_openvino_static_int8_is_cached_and_close(tiny_cross_encoder, cache_dir, fp32):
    from scipy.stats import kendalltau

    first = Reranker(str(tiny_cross_encoder), backend="openvino", quantize="int8", cache_dir=cache_dir,
                     max_tokens_per_batch=128)
    path = first.scorer.backend.path
    assert path.parent.name == "ov-int8" and path.with_suffix(".bin").is_file()
    assert "FakeQuantize" in path.read_text()  # NNCF's int8 scales, fixed by calibration
    stamp = path.stat().st_mtime_ns
    again = Reranker(str(tiny_cross_encoder), backend="openvino", quantize="int8", cache_dir=cache_dir)
    assert again.scorer.backend.path == path and path.stat().st_mtime_ns == stamp  # calibrated once
    # Static scales shift a tiny random model's logits by a near-constant offset; the order is what ranks.
    int8 = first.score_pairs(*PAIRS).scores
    assert kendalltau(int8, fp32).statistic > 0.75 and np.corrcoef(int8, fp32)[0, 1] > 0.9


def test_auto_measures_once_then_reads_the_cache(tiny_cross_encoder, tmp_path, fp32, caplog):
    with caplog.at_level(logging.INFO, logger="rayrank.backends.auto"):
        first = Reranker(str(tiny_cross_encoder), cache_dir=str(tmp_path), max_tokens_per_batch=128)
    choice = first.backend_choice
    assert choice["cached"] is False and "backend auto chose" in caplog.text
    assert (choice["backend"], choice["dtype"]) == (first.config.backend, first.config.dtype)
    assert first.scorer.backend.name == choice["backend"]
    measured = choice["measured"]
    assert set(measured) == {f"{b}/{d}" for b, d in auto.candidates()}
    assert all(m["pairs_per_s"] > 0 for m in measured.values())
    (cached,) = (tmp_path / "auto").glob("*.json")
    assert json.loads(cached.read_text())["backend"] == choice["backend"]

    second = Reranker(str(tiny_cross_encoder), cache_dir=str(tmp_path), max_tokens_per_batch=128)
    assert second.backend_choice["cached"] is True and second.config.backend == choice["backend"]
    # whatever it chose is near-exact
    assert np.abs(second.score_pairs(*PAIRS).scores - fp32).max() <= 2e-2 * np.abs(fp32).max()


def test_auto_never_offers_quantized_settings():
    assert all(dtype in ("float32", "bfloat16") for _, dtype in auto.candidates())
    config = EngineConfig()
    assert config.backend == "auto" and config.quantize == "none"


def test_auto_with_int8_asked_is_onnx(tiny_cross_encoder, tmp_path):
    config, record = resolve_engine(EngineConfig(model=str(tiny_cross_encoder), quantize="int8",
                                                 cache_dir=str(tmp_path)))
    assert config.backend == "onnx" and record["measured"] is None
    assert not (tmp_path / "auto").exists()


def test_auto_skips_settings_that_fail_or_disagree():
    batches = [{"input_ids": np.ones((2, 4), np.int64)}]

    class Fixed:
        def __init__(self, out):
            self.out = out

        def run(self, batch):
            return self.out

    outputs = {("torch", "float32"): np.array([1.0, 2.0]), ("onnx", "float32"): np.array([1.0, 2.0 + 1e-6]),
               ("openvino", "float32"): np.array([5.0, -3.0])}

    def load(backend, dtype):
        if backend == "torch" and dtype == "bfloat16":
            raise RuntimeError("no bf16 here")
        return Fixed(outputs.get((backend, dtype), outputs[("torch", "float32")]))

    settings = [("torch", "float32"), ("onnx", "float32"), ("openvino", "float32"), ("torch", "bfloat16")]
    report, _ = auto.measure(load, settings, batches, rounds=1)
    assert "error" in report[("torch", "bfloat16")]
    assert report[("openvino", "float32")]["relative_error"] > auto.MAX_RELATIVE_ERROR
    assert auto.choose(report) in {("torch", "float32"), ("onnx", "float32")}


def test_cache_key_changes_with_threads_and_dtype():
    keys = {auto.cache_key("w", "cross-encoder", t, d) for t in (1, 2) for d in ("auto", "bfloat16")}
    assert len(keys) == 4


def test_synthetic_pairs_fit_a_model_cut_shorter_than_dl20_pairs():
    """A `max_length` below DL20's shortest timed pair (32 tokens) is timed at that length, not refused."""
    batches = auto.synthetic_batches(vocab_size=500, max_length=16, pad_id=0, max_tokens=512, max_batch_size=8,
                                     overhead=0, pairs=40)
    assert sum(len(b["input_ids"]) for b in batches) == 40
    assert max(b["input_ids"].shape[1] for b in batches) <= 16
