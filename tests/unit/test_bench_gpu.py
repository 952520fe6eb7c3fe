"""bench/gpu.py runs its engine part on CPU (`--device cpu --quick`) and renders the docs' GPU tables."""

import json
import sys

from tests.ray.conftest import REPO

sys.path.insert(0, str(REPO))

from bench import gpu  # noqa: E402


def test_quick_cpu_run_writes_json_and_table(tmp_path, tiny_cross_encoder, capsys):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--device", "cpu", "--quick", "--model", str(tiny_cross_encoder), "--skip-jobs",
                     "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["engines"]
    assert {r["tokens"] for r in rows} == {32, 64}
    for length in (32, 64):
        labels = [r["contender"] for r in rows if r["tokens"] == length]
        # The best of sentence-transformers' batch sizes stands for it, and is the 1.00 of the ratio column.
        (st,) = [label for label in labels if label.startswith("sentence-transformers")]
        assert "best: batch" in st
        assert {"engine torch fp32", "engine torch bf16"} <= set(labels)
    assert all(r["pairs/s"] > 0 for r in rows)
    printed = capsys.readouterr().out
    assert "| tokens | contender" in printed and "engine torch bf16" in printed


def test_report_shows_missing_contenders_jobs_and_the_goal():
    result = {"environment": {"gpu": "NVIDIA H200", "torch": "2.x", "cpus": 16, "load": "0.1"},
              "settings": {"pairs": 20000, "repeats": 3},
              "engines": [{"tokens": 256, "contender": "sentence-transformers fp16 predict (best: batch 128)",
                           "pairs/s": 4000.0, "x sentence-transformers": 1.0},
                          {"tokens": 256, "contender": "engine torch fp16", "pairs/s": 42000.0,
                           "x sentence-transformers": 10.5},
                          {"tokens": 256, "contender": "vLLM LLM.score fp16", "pairs/s": None,
                           "x sentence-transformers": None, "note": "vllm not installed"}],
              "jobs": [{"job": "rerank job, 1 actor (1 GPU, 15 CPUs)", "rate": 38000.0, "unit": "pairs/s",
                        "x in-process": 0.905, "model busy": 0.93}]}
    text = gpu.report(result)
    assert "42,000" in text and "10.50" in text and "vllm not installed" in text
    assert "| rerank job, 1 actor (1 GPU, 15 CPUs) | 38,000 pairs/s | 0.91" in text and "0.93" in text
    assert "best engine 42,000 (engine torch fp16)" in text


def test_quick_cpu_run_times_a_decoder_and_reports_it(tmp_path, tiny_cross_encoder):
    from tests.tiny_decoders import make_qwen3

    decoder = make_qwen3(tmp_path / "qwen3")
    out = tmp_path / "gpu.json"
    assert gpu.main(["--device", "cpu", "--quick", "--model", str(tiny_cross_encoder), "--skip-jobs",
                     "--decoder-model", str(decoder), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {r["tokens"] for r in result["decoder"]} == {160, 200} and all(r["pairs/s"] > 0 for r in result["decoder"])
    assert "decoder reranker (" in gpu.report(result)
    assert gpu.engine_variants("cuda", decoder=True) == [("engine torch bf16", {"backend": "torch",
                                                                               "dtype": "bfloat16"})]
    assert gpu.decoder_engine("cuda")["max_tokens_per_batch"] == 16_384 and gpu.decoder_engine("cpu") == {}
