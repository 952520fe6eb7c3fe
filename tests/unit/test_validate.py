"""One rule for a scorable text: the Python check and the OpenAPI pattern agree on every code point."""

from __future__ import annotations

import re
import sys

import pytest

import rayrank
from rayrank.errors import InvalidInputError
from rayrank.validate import NON_BLANK_PATTERN, WHITESPACE, check_texts, text_problem


def test_the_pattern_matches_exactly_the_texts_the_rule_accepts():
    pattern = re.compile(NON_BLANK_PATTERN)
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        assert bool(pattern.search(char)) == (text_problem(char) is None), hex(code)


def test_the_pattern_is_ecma_262_safe():
    """Only \\xHH and \\uHHHH escapes, which ECMA-262 (JSON Schema's dialect) and Python read alike."""
    body = NON_BLANK_PATTERN[2:-1]
    assert re.fullmatch(r"(\\x[0-9a-f]{2}|\\u[0-9a-f]{4})+", body), body
    assert "\u001e" in WHITESPACE and "\u00a0" in WHITESPACE and "\u200b" not in WHITESPACE


@pytest.mark.parametrize("blank", ["\u001e", " \t\n", "\u00a0", "\u2028", ""])
def test_white_space_only_is_refused(blank):
    with pytest.raises(InvalidInputError, match="document at index 1 is (empty|only white space)"):
        check_texts(["ok", blank], "document")


@pytest.mark.parametrize("text", ["\u0001", "\u200b", " a ", "\u001ex"])
def test_any_other_character_is_text(text):
    assert text_problem(text) is None


def test_the_python_api_applies_the_rule(tiny_cross_encoder):
    reranker = rayrank.Reranker(str(tiny_cross_encoder), backend="torch")
    with pytest.raises(InvalidInputError, match="query at index 0 is only white space"):
        reranker.score("\u2028", ["a document"])
    assert reranker.score("q", ["\u0001", "\u001ex"]).shape == (2,)
