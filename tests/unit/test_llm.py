"""The LLM listwise stage over real HTTP against an OpenAI-compatible stand-in on 127.0.0.1."""

from __future__ import annotations

import logging
import re
import socket
import time

import pytest

from rayrank.config import parse_config
from rayrank.errors import ConfigError
from rayrank.funnel.llm import ListwiseReranker, LlmSettings, windows
from tests.openai_standin import graded, standin

KEY = "sk-test-5f3c9e1d7a"


@pytest.fixture()
def server():
    with standin() as state:
        yield state


def documents(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Ids `d00..` in a shuffled input order; document i has grade i (so the best id is the largest)."""
    import random

    ids = [f"d{i:02d}" for i in range(n)]
    random.Random(seed).shuffle(ids)
    return ids, [f"passage about topic {int(i[1:])} grade {int(i[1:])}" for i in ids]


def reranker(server, model: str = "grader", **settings) -> ListwiseReranker:
    return ListwiseReranker(LlmSettings(url=server.url, model=model, **settings))


def test_one_window_is_ordered_by_the_model(server):
    ids, texts = documents(8)
    outcome = reranker(server).rerank("which topic?", ids, texts)
    assert outcome.order == sorted(ids, reverse=True)
    assert (outcome.failure, outcome.calls, outcome.repaired) == (None, 1, 0)
    (request,) = server.requests
    schema = request["body"]["response_format"]["json_schema"]["schema"]
    assert sorted(schema["properties"]["ranking"]["items"]["enum"]) == sorted(ids)
    assert request["body"]["temperature"] == 0 and request["body"]["model"] == "grader"


def test_sliding_windows_run_bottom_up_and_bubble_the_best_to_the_top(server):
    ids, texts = documents(50, seed=1)
    outcome = reranker(server, window=20, stride=10).rerank("q", ids, texts)
    assert outcome.calls == 4 == len(windows(50, 20, 10))
    # each call saw exactly the slice RankLLM ranks, bottom window first
    seen = [[m for m in re.findall(r"^\[(d\d\d)\]", r["body"]["messages"][-1]["content"], re.M)]
            for r in server.requests]
    assert [len(s) for s in seen] == [20, 20, 20, 20]
    assert set(seen[0]) == set(ids[30:50])
    # the stride's worth of best documents reach the top, in order; the rest is a permutation
    assert outcome.order[:10] == [f"d{i}" for i in range(49, 39, -1)]
    assert sorted(outcome.order) == sorted(ids)


def test_window_arithmetic():
    assert windows(100, 20, 10) == [(s, s + 20) for s in range(80, -1, -10)]
    assert windows(21, 20, 10) == [(1, 21), (0, 11)]
    assert windows(20, 20, 20) == [(0, 20)]
    assert windows(45, 20, 20) == [(25, 45), (5, 25), (0, 5)]


@pytest.mark.parametrize("model", ["partial", "duplicate", "unknown"])
def test_bad_answers_are_repaired_keeping_earlier_order_for_missing_ids(server, model):
    ids, texts = documents(6, seed=2)
    outcome = reranker(server, model=model).rerank("q", ids, texts)
    best = graded("\n".join(f"[{i}] {t}" for i, t in zip(ids, texts)))
    expected = {"partial": best[:3] + [i for i in ids if i not in best[:3]],
                "duplicate": best[:-1] + [best[-1]], "unknown": best}[model]
    assert outcome.order == expected
    assert (outcome.failure, outcome.calls, outcome.repaired) == (None, 1, 1)


@pytest.mark.parametrize(("model", "failure"), [("malformed", "malformed_answer"), ("no-choices", "malformed_answer"),
                                                ("error", "http_status")])
def test_a_failed_call_keeps_the_previous_order_and_stops_calling(server, model, failure):
    ids, texts = documents(50, seed=3)
    outcome = reranker(server, model=model).rerank("q", ids, texts)
    assert (outcome.order, outcome.failure, outcome.calls) == (ids, failure, 1)
    assert len(server.requests) == 1


@pytest.mark.parametrize("model", ["slow", "trickle"])
def test_timeout_bounds_each_call_from_connect_to_last_byte(server, model):
    server.delay_s = 2.0 if model == "slow" else 0.05  # trickle: ~300 bytes x 50 ms each
    ids, texts = documents(5)
    started = time.monotonic()
    outcome = reranker(server, model=model, timeout_s=0.4).rerank("q", ids, texts)
    assert time.monotonic() - started < 1.5
    assert (outcome.order, outcome.failure, outcome.calls) == (ids, "timeout", 1)


def test_unreachable_server_is_a_connection_failure():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = LlmSettings(url=f"http://127.0.0.1:{port}/v1", model="m", timeout_s=1)
    outcome = ListwiseReranker(settings).rerank("q", ["a", "b"], ["x", "y"])
    assert (outcome.order, outcome.failure) == (["a", "b"], "connection")


def test_key_is_sent_as_bearer_and_never_logged(server, monkeypatch, caplog):
    monkeypatch.setenv("RANKER_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    ids, texts = documents(4)
    assert reranker(server, api_key_env="RANKER_KEY").rerank("q", ids, texts).failure is None
    assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {KEY}"
    for model in ("error", "malformed"):  # failures log a warning: still without the key
        assert reranker(server, model=model, api_key_env="RANKER_KEY").rerank("q", ids, texts).failure
    assert caplog.records and all(KEY not in r.getMessage() for r in caplog.records)
    assert KEY not in repr(reranker(server, api_key_env="RANKER_KEY").settings)


def test_no_key_in_the_environment_sends_no_authorization(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    ids, texts = documents(3)
    reranker(server).rerank("q", ids, texts)
    assert "Authorization" not in server.requests[-1]["headers"]


def test_documents_are_cut_to_max_document_chars(server):
    reranker(server, max_document_chars=10).rerank("q", ["a", "b"], ["x" * 50, "y" * 5])
    prompt = server.requests[-1]["body"]["messages"][-1]["content"]
    assert "[a] " + "x" * 10 + "\n" in prompt and "x" * 11 not in prompt


def test_short_lists_make_no_call(server):
    outcome = reranker(server).rerank("q", ["only"], ["text"])
    assert (outcome.order, outcome.calls, server.requests) == (["only"], 0, [])
    assert reranker(server).rerank("q", [], []).order == []


def test_settings_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"stride: at most window \(5\)"):
        parse_config(LlmSettings, {"url": "http://h/v1", "model": "m", "window": 5, "stride": 6}, "llm")
    with pytest.raises(ConfigError, match="url: .*expected an http"):
        parse_config(LlmSettings, {"url": "localhost:8000", "model": "m"}, "llm")
    with pytest.raises(ConfigError, match="windw: unknown key"):
        parse_config(LlmSettings, {"url": "http://h/v1", "model": "m", "windw": 5}, "llm")


def test_duplicate_ids_are_refused(server):
    with pytest.raises(ValueError, match="doc_ids must be unique"):
        reranker(server).rerank("q", ["a", "a"], ["x", "y"])
