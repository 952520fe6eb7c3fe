import re

import pytest

from rayrank.errors import ModelUnavailableError
from rayrank.models import resolve_model


def test_local_directory(tiny_cross_encoder):
    resolved = resolve_model(str(tiny_cross_encoder))
    assert resolved.source == "local"
    assert resolved.path == tiny_cross_encoder.resolve()


def test_packaged_minilm_resolves_offline():
    resolved = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert resolved.source in ("package", "hf-cache")
    assert (resolved.path / "config.json").is_file()


def test_unknown_model_names_every_place_tried():
    with pytest.raises(ModelUnavailableError) as err:
        resolve_model("nobody/no-such-model")
    message = str(err.value)
    assert "'nobody/no-such-model' could not be found" in message
    assert "Hugging Face cache" in message and "HF_HUB_OFFLINE" in message
    assert "Pass a local directory" in message


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelUnavailableError, match=re.escape(f"model directory {tmp_path} has no config.json")):
        resolve_model(str(tmp_path))
