"""The score cache on real Parquet segments: local disk, and S3 through a moto server over HTTP."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrank.config import EngineConfig
from rayrank.errors import InvalidInputError
from rayrank.io.storage import _tmp_name, storage_options
from rayrank.score_cache import (BUCKETS, ScoreCache, bucket_of_keys, engine_fingerprint, fingerprint_settings,
                                 pair_keys, prune, weights_digest)

DAY = 86_400.0
T0 = 1_800_000_000.0  # a fixed "now" for clocks


class Scorer:
    """A deterministic stand-in for a model that records which pairs it was asked to score."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, queries: list[str], documents: list[str]) -> np.ndarray:
        self.calls += list(zip(queries, documents))
        return np.array([int(hashlib.sha1(f"{q}|{d}".encode()).hexdigest()[:6], 16) / 1e6
                         for q, d in zip(queries, documents)], dtype=np.float32)


def pairs(n_queries: int, per_query: int, prefix: str = "") -> tuple[list[str], list[str]]:
    queries = [f"{prefix}query {q}" for q in range(n_queries) for _ in range(per_query)]
    documents = [f"{prefix}document {q}-{d} " + "text " * (d % 3) for q in range(n_queries) for d in range(per_query)]
    return queries, documents


def segments(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))


FP = engine_fingerprint(EngineConfig(), "weights-1", device="cpu")


def test_miss_then_hit_across_runs(tmp_path):
    queries, documents = pairs(20, 10)
    scorer = Scorer()
    first, looked = ScoreCache(str(tmp_path), FP).score(queries, documents, scorer)
    assert looked.hits == 0 and len(scorer.calls) == 200
    assert np.array_equal(first, scorer(queries, documents))
    scorer.calls.clear()
    again, looked = ScoreCache(str(tmp_path), FP).score(queries, documents, scorer)  # the next night
    assert looked.hits == 200 and scorer.calls == []
    assert np.array_equal(again, first)


def test_only_the_new_pairs_are_scored(tmp_path):
    queries, documents = pairs(10, 5)
    ScoreCache(str(tmp_path), FP).score(queries, documents, Scorer())
    more_q, more_d = pairs(3, 5, prefix="new ")
    scorer = Scorer()
    scores, looked = ScoreCache(str(tmp_path), FP).score(queries + more_q, documents + more_d, scorer)
    assert looked.hits == 50 and sorted(scorer.calls) == sorted(zip(more_q, more_d))
    assert np.array_equal(scores, Scorer()(queries + more_q, documents + more_d))


def test_pairs_repeated_in_a_batch_are_scored_and_stored_once(tmp_path):
    queries, documents = pairs(4, 3)
    batch_q, batch_d = queries * 3, documents * 3  # every pair three times
    scorer = Scorer()
    cache = ScoreCache(str(tmp_path), FP)
    scores, looked = cache.score(batch_q, batch_d, scorer)
    assert sorted(scorer.calls) == sorted(zip(queries, documents))
    assert looked.repeats == 24 and cache.written == 12
    assert np.array_equal(scores, Scorer()(batch_q, batch_d))
    assert sum(pq.read_metadata(p).num_rows for p in segments(tmp_path)) == 12


def test_another_actor_sees_published_segments_within_a_run(tmp_path):
    queries, documents = pairs(6, 4)
    a, b = ScoreCache(str(tmp_path), FP), ScoreCache(str(tmp_path), FP)
    assert b.lookup(queries, documents).hits == 0  # b has read every bucket once
    a.score(queries, documents, Scorer())
    assert b.lookup(queries, documents).hits == 24


def test_same_text_hits_whatever_the_ids_and_text_is_exact(tmp_path):
    cache = ScoreCache(str(tmp_path), FP)
    cache.score(["what is ray"], ["Ray scales Python."], Scorer())
    looked = ScoreCache(str(tmp_path), FP).lookup(["what is ray", "what is ray ", "what is ra"],
                                                 ["Ray scales Python.", "Ray scales Python.", "yRay scales Python."])
    assert looked.found.tolist() == [True, False, False]


def test_pair_keys_separate_query_from_document():
    k0, k1 = pair_keys(["ab", "a"], ["c", "bc"])
    assert (k0[0], k1[0]) != (k0[1], k1[1])
    with pytest.raises(InvalidInputError, match="2 queries but 1 documents"):
        pair_keys(["a", "b"], ["c"])


@pytest.mark.parametrize("change", [
    {"scorer": "late-interaction"}, {"backend": "onnx"}, {"dtype": "bfloat16"},
    {"backend": "onnx", "quantize": "int8"}, {"max_length": 128}, {"query_max_length": 32},
    {"long_documents": "chunk"}, {"long_documents": "chunk", "chunk_tokens": 64}, {"max_chunks_per_doc": 2},
    {"chunk_overlap_tokens": 8}, {"instruction": "Find code"}, {"prompt_template": "qwen3-reranker"},
])
def test_every_score_setting_changes_the_fingerprint(change):
    assert engine_fingerprint(EngineConfig(**change), "weights-1", device="cpu") != FP


def test_weights_device_and_extra_change_the_fingerprint_speed_settings_do_not():
    assert engine_fingerprint(EngineConfig(), "weights-2", device="cpu") != FP
    # the weights are the model: the same checkpoint at another path (or hub name) shares its scores
    assert engine_fingerprint(EngineConfig(model="/elsewhere/same-checkpoint"), "weights-1", device="cpu") == FP
    assert engine_fingerprint(EngineConfig(), "weights-1", device="cuda:0") != FP
    assert engine_fingerprint(EngineConfig(), "weights-1", device="cpu", extra={"index": "nbits=2"}) != FP
    fast = EngineConfig(threads=3, max_tokens_per_batch=1024, max_batch_size=8, device="cpu", cache_dir="/x")
    assert engine_fingerprint(fast, "weights-1", device="cpu") == FP
    # a setting this module has never heard of (added to EngineConfig later) counts
    record = EngineConfig().model_dump()
    assert engine_fingerprint(record, "w", device="cpu") != engine_fingerprint({**record, "new": 1}, "w", device="cpu")


def test_a_changed_setting_never_reads_another_settings_scores(tmp_path):
    queries, documents = pairs(5, 4)
    ScoreCache(str(tmp_path), FP).score(queries, documents, Scorer())
    other = engine_fingerprint(EngineConfig(max_length=64), "weights-1", device="cpu")
    assert ScoreCache(str(tmp_path), other).lookup(queries, documents).hits == 0
    # Even a segment copied into the other setting's folder is refused: its metadata names its fingerprint.
    for path in segments(tmp_path / FP):
        target = tmp_path / other / path.relative_to(tmp_path / FP)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    cache = ScoreCache(str(tmp_path), other)
    assert cache.lookup(queries, documents).hits == 0 and len(cache.corrupt) == len(segments(tmp_path / FP))


def test_corrupt_segment_is_ignored_and_its_pairs_rescored(tmp_path):
    queries, documents = pairs(30, 10)
    ScoreCache(str(tmp_path), FP).score(queries, documents, Scorer())
    truncated, flipped = segments(tmp_path)[:2]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: still the right length
    flipped.write_bytes(bytes(data))
    k0, _ = pair_keys(queries, documents)
    bad_buckets = {int(p.parent.name[2:], 16) for p in (truncated, flipped)}
    expected_misses = int(np.isin(bucket_of_keys(k0), list(bad_buckets)).sum())

    scorer = Scorer()
    cache = ScoreCache(str(tmp_path), FP)
    scores, looked = cache.score(queries, documents, scorer)
    assert sorted(cache.corrupt) == sorted(str(p) for p in (truncated, flipped))
    assert len(scorer.calls) == expected_misses > 0 and looked.hits == 300 - expected_misses
    assert np.array_equal(scores, Scorer()(queries, documents))
    assert ScoreCache(str(tmp_path), FP).lookup(queries, documents).hits == 300  # written back

    report = prune(str(tmp_path))
    assert report.corrupt_removed == 2 and not truncated.exists() and not flipped.exists()


def test_segment_with_a_valid_parquet_but_wrong_checksum_is_not_trusted(tmp_path):
    queries, documents = pairs(1, 1)
    ScoreCache(str(tmp_path), FP).score(queries, documents, Scorer())
    (segment,) = segments(tmp_path)
    table = pq.read_table(segment)
    # A well-formed segment of this fingerprint whose score was changed after publishing:
    pq.write_table(table.set_column(2, "score", pa.array([999.0], pa.float32())), segment, compression="zstd")
    cache = ScoreCache(str(tmp_path), FP)
    assert cache.lookup(queries, documents).hits == 0 and cache.corrupt == [str(segment)]


def test_segment_left_half_written_by_a_killed_writer_is_ignored(tmp_path):
    queries, documents = pairs(8, 8)
    ScoreCache(str(tmp_path), FP).score(queries, documents, Scorer())
    # A writer killed between writing its temporary file and the rename leaves exactly this behind.
    for path in segments(tmp_path):
        half = path.read_bytes()[: path.stat().st_size // 2]
        Path(_tmp_name(str(path))).write_bytes(half)
        path.unlink()
    scorer = Scorer()
    cache = ScoreCache(str(tmp_path), FP)
    cache.score(queries, documents, scorer)
    assert len(scorer.calls) == 64 and cache.corrupt == []  # temporaries are never opened
    assert prune(str(tmp_path)).temporaries_removed == 0  # a writer may still be at work
    report = prune(str(tmp_path), now=T0 * 2)
    assert report.temporaries_removed > 0 and not [p for p in tmp_path.rglob(".*tmp-*")]


def test_prune_by_age(tmp_path):
    old_q, old_d = pairs(10, 3, prefix="old ")
    new_q, new_d = pairs(10, 3, prefix="new ")
    ScoreCache(str(tmp_path), FP, clock=lambda: T0).score(old_q, old_d, Scorer())
    ScoreCache(str(tmp_path), FP, clock=lambda: T0 + 10 * DAY).score(new_q, new_d, Scorer())
    report = prune(str(tmp_path), max_age_days=5, now=T0 + 10 * DAY + 60)
    assert (report.entries_kept, report.entries_dropped) == (30, 30)
    cache = ScoreCache(str(tmp_path), FP)
    assert cache.lookup(old_q, old_d).hits == 0 and cache.lookup(new_q, new_d).hits == 30


def test_prune_by_size_drops_the_oldest_first_and_old_models_go_first(tmp_path):
    old_model = engine_fingerprint(EngineConfig(), "weights-0", device="cpu")
    batches = [pairs(40, 10, prefix=f"night {n} ") for n in range(3)]
    ScoreCache(str(tmp_path), old_model, clock=lambda: T0 - 30 * DAY).score(*batches[0], Scorer())
    for night, batch in enumerate(batches):
        ScoreCache(str(tmp_path), FP, clock=lambda night=night: T0 + night * DAY).score(*batch, Scorer())
    prune(str(tmp_path))  # compacted: sizes now measure entries, not per-file overhead
    total = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    report = prune(str(tmp_path), max_bytes=total // 2, now=T0 + 3 * DAY)
    assert report.bytes_after <= total // 2 < report.bytes_before
    assert sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) == report.bytes_after
    assert not (tmp_path / old_model).exists() and report.fingerprints_removed == 1
    cache = ScoreCache(str(tmp_path), FP)
    assert cache.lookup(*batches[2]).hits == 400  # the newest night is kept whole
    assert cache.lookup(*batches[0]).hits == 0


def test_compaction_keeps_every_entry_in_one_segment_per_bucket(tmp_path):
    everything_q, everything_d = [], []
    for night in range(6):
        q, d = pairs(10, 10, prefix=f"n{night} ")
        ScoreCache(str(tmp_path), FP, clock=lambda night=night: T0 + night).score(q, d, Scorer())
        everything_q += q
        everything_d += d
    before = segments(tmp_path)
    report = prune(str(tmp_path))
    after = segments(tmp_path)
    buckets = {p.parent.name for p in after}
    assert len(after) == len(buckets) <= BUCKETS < len(before)
    assert report.entries_kept == 600 and report.entries_dropped == 0 and report.segments_compacted == len(before)
    scores, looked = ScoreCache(str(tmp_path), FP).score(everything_q, everything_d, Scorer())
    assert looked.hits == 600 and np.array_equal(scores, Scorer()(everything_q, everything_d))
    assert prune(str(tmp_path)).segments_compacted == 0  # already compact: nothing rewritten


def test_lookups_hold_bounded_memory(tmp_path):
    queries, documents = pairs(50, 20)
    ScoreCache(str(tmp_path), FP).score(queries, documents, Scorer())
    cache = ScoreCache(str(tmp_path), FP, max_memory_bytes=0)
    scores, looked = cache.score(queries, documents, Scorer())
    assert looked.hits == 1000 and np.array_equal(scores, Scorer()(queries, documents))
    assert len(cache._buckets) <= 1  # only the bucket being read stays


def test_fingerprint_json_says_what_was_hashed(tmp_path):
    settings = fingerprint_settings(EngineConfig(max_length=64), "weights-1", device="cpu")
    fp = engine_fingerprint(EngineConfig(max_length=64), "weights-1", device="cpu")
    ScoreCache(str(tmp_path), fp, settings=settings).score(["q"], ["d"], Scorer())
    written = json.loads((tmp_path / fp / "fingerprint.json").read_text())
    assert written["engine"]["max_length"] == 64 and written["weights"] == "weights-1"
    assert "threads" not in written["engine"]


def test_weights_digest_reads_content_not_mtimes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "a" / "config.json").write_text("{}")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text("{}")
    (tmp_path / "b" / "model.safetensors").write_bytes(b"weights")
    assert weights_digest(tmp_path / "a") == weights_digest(tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").write_bytes(b"weightz")
    assert weights_digest(tmp_path / "a") != weights_digest(tmp_path / "b")
    # a Hugging Face snapshot links to blobs named by their hash: the link is enough
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "abc123").write_bytes(b"weights")
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "model.safetensors").symlink_to(tmp_path / "blobs" / "abc123")
    (tmp_path / "blobs" / "abc123").write_bytes(b"not read")
    first = weights_digest(tmp_path / "snap")
    (tmp_path / "blobs" / "abc123").write_bytes(b"still not read")
    assert weights_digest(tmp_path / "snap") == first


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="32 hex digits"):
        ScoreCache(str(tmp_path), "not-a-fingerprint")
    cache = ScoreCache(str(tmp_path), FP)
    looked = cache.lookup(["q", "r"], ["d", "e"])
    with pytest.raises(InvalidInputError, match="got 1 scores for 2 pairs"):
        cache.add(looked, [0.5])
    with pytest.raises(InvalidInputError, match="max_age_days must be >= 0"):
        prune(str(tmp_path), max_age_days=-1)


@pytest.fixture
def s3_cache(moto_server):
    """A bucket on a real moto S3 server over HTTP (the one the Ray S3 tests use; it needs no Ray)."""
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint)
    s3.create_bucket(Bucket="cache")
    url = "s3://cache/scores"
    yield url, storage_options(None, url), s3


def test_s3_hit_miss_corrupt_and_prune(s3_cache):
    url, options, s3 = s3_cache
    queries, documents = pairs(12, 5)
    cache = ScoreCache(url, FP, storage_options=options)
    first, looked = cache.score(queries, documents, Scorer())
    assert looked.hits == 0
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="cache", Prefix="scores/")["Contents"])
    assert keys and all(k.startswith(f"scores/{FP}/b=") and ".tmp-" not in k for k in keys)

    body = s3.get_object(Bucket="cache", Key=keys[0])["Body"].read()
    s3.put_object(Bucket="cache", Key=keys[0], Body=body[: len(body) // 2])  # corrupt one segment
    scorer = Scorer()
    again = ScoreCache(url, FP, storage_options=options)
    scores, looked = again.score(queries, documents, scorer)
    assert again.corrupt == [f"cache/{keys[0]}"] and 0 < len(scorer.calls) < 60
    assert looked.hits == 60 - len(scorer.calls) and np.array_equal(scores, first)

    report = prune(url, storage_options=options)
    assert report.corrupt_removed == 1 and report.entries_kept == 60
    assert ScoreCache(url, FP, storage_options=options).lookup(queries, documents).hits == 60
    report = prune(url, max_age_days=0, storage_options=options, now=T0 * 2)
    assert report.entries_dropped == 60 and report.fingerprints_removed == 1
    assert "Contents" not in s3.list_objects_v2(Bucket="cache", Prefix="scores/")


WRITER = """
import sys
import numpy as np
from rayrank.score_cache import ScoreCache
cache = ScoreCache(sys.argv[1], sys.argv[2])
night = 0
while True:
    queries = [f"n{night} query {q}" for q in range(200) for _ in range(20)]
    documents = [f"document {d}" for _ in range(200) for d in range(20)]
    cache.score(queries, documents, lambda q, d: np.ones(len(q), dtype=np.float32))
    night += 1
"""


def test_a_writer_killed_mid_run_leaves_only_whole_segments(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), FP])
    try:
        deadline = time.monotonic() + 60
        while len(segments(tmp_path)) < 3 * BUCKETS and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    published = segments(tmp_path)
    assert len(published) >= 3 * BUCKETS
    queries = [f"n0 query {q}" for q in range(200) for _ in range(20)]
    documents = [f"document {d}" for _ in range(200) for d in range(20)]
    cache = ScoreCache(str(tmp_path), FP)
    looked = cache.lookup(queries, documents)
    assert cache.corrupt == [] and looked.hits == 4000  # the first night was published whole
    assert np.all(looked.scores == 1.0)
    stored = sum(pq.read_metadata(p).num_rows for p in published)
    assert prune(str(tmp_path), now=T0 * 2).entries_kept == stored and cache.corrupt == []


def test_a_pair_two_actors_scored_at_once_keeps_the_newest_score(tmp_path):
    queries, documents = pairs(30, 10)
    a = ScoreCache(str(tmp_path), FP, clock=lambda: T0)
    b = ScoreCache(str(tmp_path), FP, clock=lambda: T0 + 1)
    looked_a, looked_b = a.lookup(queries, documents), b.lookup(queries, documents)  # both miss everything
    b.add(looked_b, np.full(300, 2.0, np.float32))
    a.add(looked_a, np.full(300, 1.0, np.float32))  # published later, but scored earlier
    assert np.all(ScoreCache(str(tmp_path), FP).lookup(queries, documents).scores == 2.0)
    assert prune(str(tmp_path)).entries_kept == 300
    assert np.all(ScoreCache(str(tmp_path), FP).lookup(queries, documents).scores == 2.0)
