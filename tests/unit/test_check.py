"""`rayrank check MODEL` loads a model as the jobs do and reports each backend's distance from torch fp32."""

from __future__ import annotations

import sys

import pytest

from rayrank import check
from tests.tiny_models import make_cross_encoder


def test_a_cross_encoder_on_each_backend(tiny_cross_encoder, cache_dir, capsys):
    assert check.main([str(tiny_cross_encoder), "--backends", "torch,onnx,openvino", "--cache-dir", cache_dir]) == 0
    out = capsys.readouterr().out
    assert "family           bert (BertForSequenceClassification)" in out
    assert "scorer           cross-encoder (CrossEncoderScorer)" in out and "max length       64 tokens" in out
    for backend in ("torch", "onnx", "openvino"):
        assert f"  {backend:<16} max |Δ| vs torch fp32" in out and out.count("ok") >= 3


def test_a_colbert_checkpoint_is_late_interaction(tiny_colbert, cache_dir, capsys):
    assert check.main([str(tiny_colbert), "--backends", "torch", "--cache-dir", cache_dir]) == 0
    out = capsys.readouterr().out
    assert "late-interaction (LateInteractionScorer)" in out and "embedding dim    16" in out
    assert "markers '[unused0]'/'[unused1]'" in out


def test_a_backend_that_cannot_run_says_why_and_the_rest_go_on(tiny_cross_encoder, cache_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as on a core install, without rayrank[openvino]
    assert check.main([str(tiny_cross_encoder), "--backends", "openvino,onnx", "--cache-dir", cache_dir]) == 0
    out = capsys.readouterr().out
    assert 'openvino         does not run here: backend: openvino needs' in out and 'rayrank[openvino]' in out
    assert "onnx             max |Δ| vs torch fp32" in out


def test_an_unknown_backend_is_refused_before_loading(tiny_cross_encoder, capsys):
    with pytest.raises(SystemExit):
        check.main([str(tiny_cross_encoder), "--backends", "torch,nosuch"])
    assert "unknown backend(s) ['nosuch']" in capsys.readouterr().err


def test_a_missing_model_is_a_cli_error(tmp_path, capsys):
    assert check.main([str(tmp_path / "nothing-here")]) == 2
    assert "rayrank check: error: model" in capsys.readouterr().err


@pytest.mark.parametrize(("architecture", "expected"), [("BertForSequenceClassification", "cross-encoder"),
                                                         ("Qwen3ForCausalLM", "cross-encoder"),
                                                         ("HF_ColBERT", "late-interaction"),
                                                         ("BertModel", "late-interaction")])
def test_detect_scorer(tmp_path, architecture, expected):
    (tmp_path / "config.json").write_text(f'{{"architectures": ["{architecture}"]}}')
    assert check.detect_scorer(tmp_path) == expected


def test_check_is_a_rayrank_command(tmp_path):
    from rayrank.cli import COMMANDS, GROUPS

    assert COMMANDS["check"][0] == "rayrank.check"
    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(COMMANDS), "every command is listed in exactly one group"
    make_cross_encoder(tmp_path / "m")  # detect_scorer on a real saved checkpoint
    assert check.detect_scorer(tmp_path / "m") == "cross-encoder"


def test_a_decoder_shows_its_prompt_and_answer_tokens(tmp_path, cache_dir, capsys):
    from tests.tiny_decoders import make_qwen3

    model = make_qwen3(tmp_path / "qwen3")
    assert check.main([str(model), "--backends", "torch", "--cache-dir", cache_dir,
                       "--instruction", "Find the passage about fish"]) == 0
    out = capsys.readouterr().out
    assert "cross-encoder (DecoderScorer)" in out and "family           qwen3 (Qwen3ForCausalLM)" in out
    assert "score            logit('yes') - logit('no') at the last token" in out
    prompt = next(line for line in out.splitlines() if line.startswith("  prompt"))
    assert "{query}" in prompt and "{document}" in prompt and "Find the passage about fish" in prompt
