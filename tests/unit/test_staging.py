"""Staging a shard as one object: every row lands in its bucket's piece, each piece reads back alone;
the job actors' busy-fraction arithmetic and CPU split."""

import os

import fsspec
import numpy as np
import pyarrow as pa
import pytest

from rayrank.io.staging import pack_buckets, read_piece
from rayrank.jobs._phases import split_cpus, summarize


def test_pieces_hold_exactly_their_buckets_rows_in_order(tmp_path):
    table = pa.table({"query_id": [f"q{i}" for i in range(50)], "score": np.arange(50, dtype=np.float32)})
    buckets = np.random.default_rng(0).integers(0, 7, 50).astype(np.uint64)
    data, ranges = pack_buckets(table, buckets)
    fs = fsspec.filesystem("file")
    path = str(tmp_path / "shard.parquet")
    fs.pipe_file(path, data)
    assert sorted(ranges) == sorted(set(buckets.tolist()))
    for bucket, (start, end) in ranges.items():
        piece = read_piece(fs, path, start, end)
        assert piece["score"].to_pylist() == [float(i) for i in np.flatnonzero(buckets == bucket)]
    assert sum(e - s for s, e in ranges.values()) == len(data)


def test_empty_shard_stages_no_piece():
    data, ranges = pack_buckets(pa.table({"query_id": pa.array([], pa.string())}), np.array([], np.uint64))
    assert data == b"" and ranges == {}


def test_busy_fraction_is_model_seconds_over_actor_spans():
    units = [{"actor": "a", "started_at": 0.0, "finished_at": 4.0, "model_s": 2.0, "tokenize_s": 1.0},
             {"actor": "a", "started_at": 2.0, "finished_at": 6.0, "model_s": 2.0},
             {"actor": "b", "started_at": 10.0, "finished_at": 12.0, "model_s": 1.0}]
    totals = summarize(units)
    assert totals["actor_s"] == 8.0 and totals["actors"] == 2 and totals["model_s"] == 5.0
    assert totals["model_busy"] == pytest.approx(5 / 8) and totals["tokenize_s"] == 1.0
    assert summarize([])["model_busy"] is None


@pytest.mark.parametrize(("cpus", "threads", "prefetch", "expected"),
                         [(2, 1, 1, ("false", None)), (4, 1, 2, ("false", None)), (7, 2, 1, (None, "5")),
                          (2, None, 1, (None, None)), (2, 1, 0, (None, None)), (1, 1, 1, (None, None))])
def test_tokenizer_gets_the_cpus_the_model_leaves(monkeypatch, cpus, threads, prefetch, expected):
    """Shard threads that can fill the spare CPUs encode on their own; more CPUs go to the tokenizer's pool."""
    monkeypatch.delenv("RAYON_NUM_THREADS", raising=False)
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    split_cpus(cpus, threads, prefetch)
    assert (os.environ.get("TOKENIZERS_PARALLELISM"), os.environ.get("RAYON_NUM_THREADS")) == expected


def test_a_users_tokenizer_setting_wins(monkeypatch):
    monkeypatch.delenv("RAYON_NUM_THREADS", raising=False)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    split_cpus(2, 1, 1)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true" and "RAYON_NUM_THREADS" not in os.environ
