"""Every YAML in configs/ that is a job config parses; the CLI dispatcher routes and explains."""

from pathlib import Path

import pytest

from rayrank.cli import main as cli
from rayrank.config import RerankJobConfig, load_yaml, parse_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("rerank.*.yaml")), ids=lambda p: p.name)
def test_rerank_configs_validate(path):
    config = parse_config(RerankJobConfig, load_yaml(path), str(path))
    assert config.engine.scorer in ("cross-encoder", "late-interaction")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("lab.*.yaml")), ids=lambda p: p.name)
def test_lab_configs_validate(path):
    from rayrank.lab.config import DistillConfig, FinetuneConfig

    kind = DistillConfig if path.name.startswith("lab.distill.") else FinetuneConfig
    config = parse_config(kind, load_yaml(path), str(path))
    assert config.output and config.train.max_minutes  # the documented demonstrations bound their time


def test_cli_help_and_unknown_command(capsys):
    assert cli([]) == 0 and "rerank" in capsys.readouterr().out
    assert cli(["frobnicate"]) == 2 and "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("funnel*.yaml")), ids=lambda p: p.name)
def test_funnel_configs_validate(path):
    from rayrank.funnel.config import parse_funnel

    config = parse_funnel(load_yaml(path), str(path))  # the corpus is checked when the job starts
    assert config.stages[0].kind in ("bm25", "dense", "late-interaction")
