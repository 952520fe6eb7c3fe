"""Every flag of every `rayrank` command says what it does, and one idea has one flag name across commands."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from rayrank.cli import COMMANDS

GEN = Path(__file__).resolve().parents[2] / "docs" / "gen_reference.py"


def parsers() -> dict[str, argparse.ArgumentParser]:
    spec = importlib.util.spec_from_file_location("gen_reference", GEN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name: module.command_parser(name) for name in COMMANDS}


@pytest.fixture(scope="module")
def every_parser():
    return parsers()


def test_every_flag_has_help(every_parser):
    missing = [(name, action.option_strings or action.dest) for name, parser in every_parser.items()
               for action in parser._actions
               if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()]
    assert not missing, missing


def test_engine_flags_are_the_same_wherever_they_appear(every_parser):
    """rerank, index and search define --backend, --max-length, ... through jobs/_flags.py, with one help text."""
    helps: dict[str, set[str]] = {}
    for name in ("rerank", "index", "search"):
        for action in every_parser[name]._actions:
            for flag in action.option_strings:
                if flag in ("--backend", "--quantize", "--max-tokens-per-batch", "--max-length"):
                    helps.setdefault(flag, set()).add(action.help)
    assert set(helps) == {"--backend", "--quantize", "--max-tokens-per-batch", "--max-length"}
    assert all(len(texts) == 1 for texts in helps.values()), helps


def test_top_n_is_the_flag_for_results_per_query(every_parser):
    for name in ("rerank", "search", "export"):
        assert "--top-n" in every_parser[name]._option_string_actions, name
