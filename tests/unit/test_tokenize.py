"""One `TextTokenizer` called from several threads at once (a job actor tokenizes the next shard while
the model scores this one) gives what serial calls give, whatever truncation each call asks for."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from rayrank.tokenize import Chunking, TextTokenizer

WORDS = "ray cluster python data model query document search rank score node actor".split()


def text(i: int, words: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words))


def test_concurrent_calls_with_different_truncation_match_serial_calls(tiny_cross_encoder):
    tok = TextTokenizer(tiny_cross_encoder)
    queries, docs = [text(i, 3) for i in range(64)], [text(i, 5 + i % 40) for i in range(64)]
    chunking = Chunking(tokens=12, overlap=2, max_chunks=3)
    calls = [  # each reads the truncation setting another call changes
        lambda: tok.encode_pairs(queries, docs, 16).input_ids,
        lambda: tok.encode_pairs(queries, docs, 48).input_ids,
        lambda: tok.encode_texts(docs, 10, prefix="[D] ").input_ids,
        lambda: tok.encode_pairs_chunked(queries, docs, 32, chunking).encoded.input_ids,
        lambda: tok.encode_texts_chunked(docs, 20, chunking).encoded.input_ids,
        lambda: tok.cut_texts(docs, 7),
    ]
    serial = [call() for call in calls]
    with ThreadPoolExecutor(6) as pool:
        for _ in range(8):
            futures = [pool.submit(calls[k % len(calls)]) for k in range(4 * len(calls))]
            assert [f.result() for f in futures] == [serial[k % len(calls)] for k in range(4 * len(calls))]


def test_markers_added_later_reach_every_threads_copy(tiny_cross_encoder):
    """Each thread encodes with its own copy; `add_markers` must reach copies made before it."""
    tok = TextTokenizer(tiny_cross_encoder)
    with ThreadPoolExecutor(1) as pool:
        before = pool.submit(lambda: tok.encode_texts(["[Q] ray"], 16).input_ids[0]).result()
        tok.add_markers(["[Q] "])
        after = pool.submit(lambda: tok.encode_texts(["[Q] ray"], 16).input_ids[0]).result()
    marker = tok.vocab["[Q]"]
    assert marker not in before and after.count(marker) == 1
    assert after == tok.encode_texts(["[Q] ray"], 16).input_ids[0]
