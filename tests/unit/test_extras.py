"""The core install is the declared stack; each optional feature names the extra that brings it back."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from rayrank.errors import MissingExtraError, RayrankError
from rayrank.extras import EXTRAS, require

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return requirement.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()


def test_core_is_the_declared_stack_and_what_the_engine_needs():
    core = {_name(r) for r in PROJECT["dependencies"]}
    assert {"ray", "sentence-transformers", "torch", "onnxruntime", "pyarrow", "s3fs", "pydantic"} <= core
    assert not core & {"openvino", "nncf", "faiss-cpu", "pystemmer", "matplotlib", "datasets", "accelerate"}


def test_each_extra_holds_its_packages():
    extras = {k: {_name(r) for r in v} for k, v in PROJECT["optional-dependencies"].items()}
    assert extras["openvino"] == {"openvino", "nncf"}
    assert extras["funnel"] == {"pystemmer", "faiss-cpu"}
    assert extras["lab"] == {"datasets", "accelerate", "matplotlib"}
    assert extras["gpu"] == {"onnxruntime-gpu"}
    assert PROJECT["optional-dependencies"]["all"] == ["rayrank[openvino,funnel,lab]"]
    assert {e for module, (e, _) in EXTRAS.items()} <= set(extras)


# A module set to None in sys.modules is absent to `import` (ModuleNotFoundError) and to find_spec (None).
BLOCK = """
import sys
sys.modules.update(dict.fromkeys({blocked!r}))
"""


def run_without(modules: set[str], code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK.format(blocked=modules) + code], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


@pytest.mark.parametrize(("module", "extra"), [("Stemmer", "funnel"), ("faiss", "funnel"), ("openvino", "openvino"),
                                               ("matplotlib", "lab"), ("datasets", "lab")])
def test_a_missing_extra_names_its_pip_command(module, extra):
    done = run_without({module}, f"from rayrank.extras import require\nrequire({module!r})")
    assert done.returncode == 1
    assert "MissingExtraError" in done.stderr and f'pip install "rayrank[{extra}]"' in done.stderr, done.stderr[-800:]


def test_the_engine_runs_without_the_extras_and_openvino_says_how_to_get_it(tiny_cross_encoder, tmp_path):
    code = f"""
import os
os.environ["HF_HUB_OFFLINE"] = "1"; os.environ["RAYRANK_CACHE"] = {str(tmp_path)!r}
import rayrank
from rayrank.errors import MissingExtraError
print(rayrank.Reranker({str(tiny_cross_encoder)!r}, backend="torch").score("q", ["a doc"]).shape)
try:
    rayrank.Reranker({str(tiny_cross_encoder)!r}, backend="openvino")
except MissingExtraError as exc:
    print("refused:", exc)
"""
    done = run_without({"openvino", "nncf", "faiss", "Stemmer", "matplotlib", "datasets", "accelerate"}, code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(1,)" in done.stdout and 'refused: backend: openvino needs' in done.stdout
    assert 'pip install "rayrank[openvino]"' in done.stdout


def test_the_error_is_in_the_tree():
    assert issubclass(MissingExtraError, RayrankError) and issubclass(MissingExtraError, ImportError)
    assert require("Stemmer").__name__ == "Stemmer"
