"""Decoder rerankers through the rerank job on the session's Ray: the job's scores are the engine's."""

from __future__ import annotations

import numpy as np
import pytest
from rayrank.jobs.rerank import main

from rayrank import Reranker
from tests.ray.conftest import candidates, read_output, write_rows
from tests.tiny_decoders import make_qwen2, make_qwen3


@pytest.mark.parametrize(("make", "name", "flags"), [
    (make_qwen3, "qwen3-chat-template", ["--instruction", "Find fish"]),  # the checkpoint's chat template
    (make_qwen2, "mxbai-rerank-v2-tiny", []),  # the built-in family its name states
], ids=["qwen3-instruction", "mxbai-v2-builtin"])
def test_decoder_scores_in_the_job_equal_the_engine(tmp_path, job_config, make, name, flags):
    model = make(tmp_path / name)
    rows = candidates(2, 4)
    write_rows(tmp_path / "in.parquet", rows)
    out = tmp_path / "out"
    config = job_config(engine={"model": str(model), "scorer": "cross-encoder", "backend": "torch"})
    assert main([str(tmp_path / "in.parquet"), str(out), "--config", str(config), *flags]) == 0
    table = read_output(out).to_pylist()
    got = {r["doc_id"]: r["score"] for r in table}
    instruction = flags[1] if flags else None
    want = Reranker(str(model), backend="torch").score_pairs([r["query"] for r in rows], [r["text"] for r in rows],
                                                              instruction=instruction).scores
    np.testing.assert_allclose([got[r["doc_id"]] for r in rows], want, atol=1e-5, rtol=0)
