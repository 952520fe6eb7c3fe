"""ONNX export: fused graph, cache reuse, external data, publishing races, and int8 closeness measured the way
each scorer uses its output."""

import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest

from rayrank import Reranker
from rayrank.backends import onnx_backend
from rayrank.backends.onnx_backend import int8_saturates, publish
from rayrank.scoring.late_interaction import maxsim


def _ops(path) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _onnx_path(reranker: Reranker):
    return reranker.scorer.backend.path


@pytest.fixture(scope="module")
def docs():
    return ["ray cluster python data", "the sea and the sun", " ".join(["model"] * 30),
            "what is a fast search rank score", "cat dog fish", "how to run a big data cluster"]


def test_attention_is_fused(tiny_cross_encoder, cache_dir):
    # Unfused attention (a dozen MatMul/Softmax/Where nodes per layer) was the main fp32 ONNX slowdown.
    ops = _ops(_onnx_path(Reranker(str(tiny_cross_encoder), backend="onnx", cache_dir=cache_dir)))
    assert ops["Attention"] == 2 and ops["Softmax"] == 0
    assert ops["SkipLayerNormalization"] > 0


def test_export_is_reused(tiny_cross_encoder, cache_dir):
    first = _onnx_path(Reranker(str(tiny_cross_encoder), backend="onnx", cache_dir=cache_dir))
    stamp = first.stat().st_mtime_ns
    second = _onnx_path(Reranker(str(tiny_cross_encoder), backend="onnx", cache_dir=cache_dir))
    assert second == first and second.stat().st_mtime_ns == stamp


def test_int8_graph_is_quantized(tiny_cross_encoder, cache_dir):
    path = _onnx_path(Reranker(str(tiny_cross_encoder), backend="onnx", quantize="int8", cache_dir=cache_dir))
    assert path.parent.name == ("int8-7bit" if int8_saturates() else "int8")
    ops = _ops(path)
    assert ops["QAttention"] + ops["MatMulInteger"] + ops["DynamicQuantizeMatMul"] > 0


def test_int8_token_embeddings_keep_maxsim(tiny_colbert, cache_dir, docs):
    # Late interaction only uses cosines of normalised token embeddings, so that is the measure: each
    # token keeps its direction, and MaxSim moves by little per query token (a cosine lies in [-1, 1]).
    # With 8-bit weights on an x86 CPU without VNNI (int16 saturation) the mean cosine fell to 0.992
    # and MaxSim moved by 0.02 per token; 7-bit weights there keep both bounds below.
    fp32 = Reranker(str(tiny_colbert), scorer="late-interaction", backend="onnx", cache_dir=cache_dir).scorer
    int8 = Reranker(str(tiny_colbert), scorer="late-interaction", backend="onnx", quantize="int8",
                    cache_dir=cache_dir).scorer
    a, b = fp32.encode_documents(docs), int8.encode_documents(docs)
    cosine = np.concatenate([(x.astype(np.float32) * y.astype(np.float32)).sum(-1) for x, y in zip(a, b)])
    assert cosine.mean() > 0.998 and cosine.min() > 0.995
    for text in ("python data cluster", "sea sun", "fast search rank"):
        (query,) = fp32.encode_queries([text])
        assert np.abs(maxsim(query, a) - maxsim(query, b)).max() / len(query) < 0.01


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_matches_fp32_on_cpu(tiny_cross_encoder, docs, dtype):
    # The GPU path's dtypes, run on CPU: same scores as fp32 within half-precision rounding, same order.
    queries = ["ray cluster", "fish in the sea", "fast search"]
    pairs = [(q, d) for q in queries for d in docs]
    fp32 = Reranker(str(tiny_cross_encoder), backend="torch", device="cpu", dtype="float32")
    half = Reranker(str(tiny_cross_encoder), backend="torch", device="cpu", dtype=dtype)
    assert half.scorer.backend.dtype == dtype
    a = fp32.score_pairs(*zip(*pairs)).scores
    b = half.score_pairs(*zip(*pairs)).scores
    assert b.dtype == np.float32
    spread = a.max() - a.min()
    assert np.abs(a - b).max() < 0.02 * spread
    for i in range(len(queries)):  # per query, the ranking survives the rounding
        rows = slice(i * len(docs), (i + 1) * len(docs))
        assert np.corrcoef(np.argsort(np.argsort(a[rows])), np.argsort(np.argsort(b[rows])))[0, 1] > 0.9


@pytest.mark.parametrize("backend", ["torch", "onnx", "openvino"])
def test_backend_runs_from_several_threads_at_once(tiny_cross_encoder, cache_dir, docs, backend):
    # The jobs' actors run shard calls in threads and Serve scores in worker threads: a backend must
    # give every caller its own batch's output. OpenVINO's shared infer request raised "Infer Request
    # is busy" on CI before its calls took turns.
    scorer = Reranker(str(tiny_cross_encoder), backend=backend, cache_dir=cache_dir).scorer
    rows, pad_id = np.arange(len(docs)), scorer.tokenizer.pad_id
    batches = [scorer.tokenizer.encode_pairs([q] * len(docs), docs, 64).batch(rows, pad_id)
               for q in ("ray cluster", "fish in the sea", "fast search", "big data")]
    expected = [scorer.backend.run(b) for b in batches]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: scorer.backend.run(batches[i % 4]), range(64)))
    for i, out in enumerate(got):
        np.testing.assert_allclose(out, expected[i % 4], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("backend", "quantize"), [("onnx", "none"), ("onnx", "int8"), ("openvino", "none"),
                                                   ("openvino", "int8")])
def test_external_data_travels_with_the_graph(tiny_cross_encoder, tmp_path, monkeypatch, docs, backend, quantize):
    # A model over the threshold (2 GB models in production; every model here) keeps its weights in one data
    # file beside the graph, in the graph's own folder, and scores as before.
    monkeypatch.setattr(onnx_backend, "EXTERNAL_DATA_BYTES", 0)
    pairs = (["ray cluster", "fish in the sea", "fast search"] * 2, docs)
    fp32 = Reranker(str(tiny_cross_encoder), backend="torch", device="cpu").score_pairs(*pairs).scores
    reranker = Reranker(str(tiny_cross_encoder), backend=backend, quantize=quantize, cache_dir=str(tmp_path))
    path = reranker.scorer.backend.path
    fp32_graph = path.parent.with_name("fp32") / "model.onnx"
    assert sorted(p.name for p in fp32_graph.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    external = [t for t in onnx.load(str(fp32_graph), load_external_data=False).graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) > 10
    if backend == "openvino" and quantize == "int8":
        assert sorted(p.name for p in path.parent.iterdir()) == ["model.bin", "model.xml"]
    else:
        assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert not [p for p in path.parent.parent.iterdir() if p.name.startswith(".staging-")]
    scores = reranker.score_pairs(*pairs).scores
    if quantize == "none":
        np.testing.assert_allclose(scores, fp32, atol=1e-4, rtol=0)
    else:
        assert np.corrcoef(scores, fp32)[0, 1] > 0.9


def test_racing_publishers_leave_one_whole_folder(tmp_path):
    # Four actors export the same model at once while a reader polls: whenever the graph is visible its data
    # file is complete, every actor gets the same path, and one writer's files (never a mix) remain.
    target = tmp_path / "key" / "fp32" / "model.onnx"
    start, torn = threading.Barrier(5), []

    def write(i):
        def fill(path):
            (path.parent / "model.onnx.data").write_bytes(bytes([i]) * 100_000)
            time.sleep(0.05)
            path.write_text(str(i))
        start.wait()
        return publish(target, fill)

    def read():
        start.wait()
        for _ in range(2000):
            if target.is_file():
                data = (target.parent / "model.onnx.data").read_bytes()
                torn.append(len(data) != 100_000 or data[0] != int(target.read_text()))
            time.sleep(0.0005)

    with ThreadPoolExecutor(5) as pool:
        reader = pool.submit(read)
        paths = list(pool.map(write, range(4)))
        reader.result()
    assert paths == [target] * 4 and torn and not any(torn)
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert [p.name for p in target.parent.parent.iterdir()] == ["fp32"]  # no staging folder left behind
