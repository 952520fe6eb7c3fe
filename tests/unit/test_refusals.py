"""Every deliberate error is a RayrankError; the commands print it as `rayrank CMD: error: ...` (exit 2), and a
configuration that cannot run is refused in the driver, before Ray starts, not by every actor."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rayrank.jobs._ray
from rayrank import errors
from rayrank.cli import command, rayrank_cause
from rayrank.config import EngineConfig, parse_config
from rayrank.errors import ConfigError, IndexFormatError, RayrankError, StorageError
from rayrank.funnel.config import FunnelConfig
from rayrank.funnel.stages import check_stages


@pytest.fixture
def missing(monkeypatch):
    """Make optional packages look uninstalled: `missing("faiss")`."""
    import rayrank.extras

    gone: set[str] = set()
    installed = rayrank.extras.installed
    monkeypatch.setattr(rayrank.extras, "installed", lambda module: module not in gone and installed(module))
    monkeypatch.setattr(rayrank.extras, "require", _refuse(rayrank.extras.require, gone))
    return gone.add


def _refuse(require, gone):
    def patched(module):
        if module in gone:
            raise errors.MissingExtraError(f"{module} is missing (test)")
        return require(module)

    return patched


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if a job gets as far as starting (or joining) Ray."""

    def connect(address):
        raise AssertionError("the job reached Ray before refusing its configuration")

    monkeypatch.setattr(rayrank.jobs._ray, "connect", connect)


def _index(path, model: str, kind: str = "late-interaction"):
    """An index directory with a manifest only: all the driver reads before refusing."""
    from rayrank.funnel.dense import DENSE_FORMAT

    path.mkdir()
    form = {"format": DENSE_FORMAT} if kind == "dense" else {"format_version": 1}
    (path / "_manifest.json").write_text(json.dumps({**form, "model": {"name": model}, "shards": []}))
    return path


def _pairs(path):
    pq.write_table(pa.table({"query_id": ["q"], "query": ["what is ray"], "doc_id": ["d"], "text": ["ray"]}), path)
    return path


@pytest.mark.parametrize("kind", [k for k in vars(errors).values() if isinstance(k, type) and issubclass(k, Exception)])
def test_every_error_is_a_rayrank_error(kind):
    assert issubclass(kind, RayrankError)


def test_the_old_homes_raise_the_tree():
    from rayrank.index.format import IndexFormatError as from_format
    from rayrank.io.storage import StorageError as from_storage
    from rayrank.io.tables import InputSchemaError
    from rayrank.jobs._output import OutputConflictError

    for kind in (from_format, from_storage, InputSchemaError, OutputConflictError):
        assert issubclass(kind, RayrankError)


def test_command_prints_an_error_and_exits_2(capsys):
    @command("demo")
    def main(argv=None):
        raise ConfigError("engine.max_batch_size: must be positive, got 0")

    assert main([]) == 2
    assert capsys.readouterr().err == "rayrank demo: error: engine.max_batch_size: must be positive, got 0\n"


def test_command_finds_a_storage_error_inside_a_ray_error(capsys):
    @command("demo")
    def main(argv=None):  # how Ray Data hands on an actor's error: only its traceback text survives
        raise RuntimeError("Traceback (most recent call last):\n  ...\nrayrank.errors.StorageError: storage operation "
                           "failed after 4 attempts: staging shard 3")

    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rayrank demo: error: storage operation failed after 4 attempts: staging shard 3")
    assert "(rerun the same command to resume)" in err


def test_rayrank_cause_leaves_other_errors_alone():
    assert rayrank_cause(RuntimeError("boom")) is None
    error = StorageError("x")
    assert rayrank_cause(error) is error


def test_torch_backend_with_int8_is_refused_at_parse():
    with pytest.raises(ConfigError, match=r"quantize='int8' needs backend='onnx' or 'openvino'"):
        parse_config(EngineConfig, {"backend": "torch", "quantize": "int8"}, "flags")
    assert EngineConfig(backend="auto", quantize="int8").quantize == "int8"


def test_rerank_torch_int8_is_refused_before_ray(tmp_path, no_ray, capsys):
    from rayrank.jobs.rerank import main

    args = [str(_pairs(tmp_path / "in.parquet")), str(tmp_path / "out"), "--backend", "torch", "--quantize", "int8"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("rayrank rerank: error: ") and "quantize='int8' needs backend='onnx'" in err
    assert not (tmp_path / "out").exists()


def test_rerank_with_another_models_index_is_refused_before_ray(tmp_path, tiny_encoder, no_ray, capsys):
    from rayrank.jobs.rerank import main

    index = _index(tmp_path / "ix", "someone/else")
    args = [str(_pairs(tmp_path / "in.parquet")), str(tmp_path / "out"), "--scorer", "late-interaction",
            "--model", str(tiny_encoder), "--index", str(index)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("rayrank rerank: error: ") and "was built with model 'someone/else'" in err
    assert not (tmp_path / "out").exists()


def test_rerank_with_a_missing_index_is_refused_before_ray(tmp_path, tiny_encoder, no_ray, capsys):
    from rayrank.jobs.rerank import main

    args = [str(_pairs(tmp_path / "in.parquet")), str(tmp_path / "out"), "--scorer", "late-interaction",
            "--model", str(tiny_encoder), "--index", str(tmp_path / "nowhere")]
    assert main(args) == 2
    assert "has no _manifest.json" in capsys.readouterr().err


def test_funnel_stage_with_another_models_index_is_refused(tmp_path, tiny_encoder):
    corpus = _pairs(tmp_path / "corpus.parquet")
    stages = [{"kind": "bm25", "name": "bm25", "k": 10},
              {"kind": "dense", "name": "dense", "k": 10, "model": str(tiny_encoder),
               "index": str(_index(tmp_path / "dense", "someone/else", "dense"))}]
    config = FunnelConfig.model_validate({"corpus": {"path": str(corpus)}, "stages": stages})
    with pytest.raises(IndexFormatError, match="was built with model 'someone/else'"):
        check_stages(config)
    missing = FunnelConfig.model_validate({"corpus": {"path": str(corpus)},
                                           "stages": [stages[0], {**stages[1], "index": str(tmp_path / "later")}]})
    check_stages(missing)  # not built yet: the batch job builds it with the stage's own model


def test_funnel_stage_with_the_other_kind_of_index_is_refused(tmp_path, tiny_encoder):
    corpus = _pairs(tmp_path / "corpus.parquet")
    dense = str(_index(tmp_path / "dense", str(tiny_encoder), "dense"))
    late = str(_index(tmp_path / "late", str(tiny_encoder)))
    retrieve = {"kind": "bm25", "name": "bm25", "k": 10}
    rerank = {"kind": "rerank", "name": "rerank", "k": 5, "index": dense,
              "engine": {"scorer": "late-interaction", "model": str(tiny_encoder)}}
    config = FunnelConfig.model_validate({"corpus": {"path": str(corpus)}, "stages": [retrieve, rerank]})
    with pytest.raises(IndexFormatError, match="index format None is not supported"):
        check_stages(config)
    wrong = {"kind": "dense", "name": "dense", "k": 10, "model": str(tiny_encoder), "index": late}
    config = FunnelConfig.model_validate({"corpus": {"path": str(corpus)}, "stages": [retrieve, wrong]})
    with pytest.raises(IndexFormatError, match="is not a finished dense index"):
        check_stages(config)


def test_rerank_on_openvino_without_it_is_refused_before_ray(tmp_path, tiny_cross_encoder, missing, no_ray, capsys):
    from rayrank.jobs.rerank import main

    missing("openvino")
    args = [str(_pairs(tmp_path / "in.parquet")), str(tmp_path / "out"), "--model", str(tiny_cross_encoder),
            "--backend", "openvino"]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("rayrank rerank: error: openvino is missing")


def test_funnel_stage_needing_a_missing_package_is_refused(tmp_path, tiny_encoder, missing):
    corpus = _pairs(tmp_path / "corpus.parquet")
    stages = [{"kind": "bm25", "name": "bm25", "k": 10, "stemmer": "none"},
              {"kind": "dense", "name": "dense", "k": 10, "model": str(tiny_encoder), "method": "hnsw",
               "index": str(tmp_path / "later")}]
    config = FunnelConfig.model_validate({"corpus": {"path": str(corpus)}, "stages": stages})
    missing("faiss")
    with pytest.raises(errors.MissingExtraError, match="faiss is missing"):
        check_stages(config)
