"""The job actor's model gate: one shard call's batches run back to back, and a failed call frees the model."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from rayrank.jobs._phases import ModelGate, Phases


class _Backend:
    name, device = "fake", "cpu"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def run(self, batch):
        self.calls.append(threading.current_thread().name)
        time.sleep(0.002)
        return np.zeros(len(batch["input_ids"]), dtype=np.float32)


def _batch() -> dict[str, np.ndarray]:
    return {"input_ids": np.ones((2, 3), dtype=np.int64), "attention_mask": np.ones((2, 3), dtype=np.int64)}


def test_a_shard_calls_batches_are_not_interleaved_with_another_shards():
    backend = _Backend()
    scorer = SimpleNamespace(backend=backend)
    gate = ModelGate(scorer)
    start = threading.Barrier(2)

    def shard() -> Phases:
        phases = Phases()
        with gate.shard(phases), gate.engine(phases):
            start.wait()
            for _ in range(5):
                scorer.backend.run(_batch())
        return phases

    results = {}
    threads = [threading.Thread(target=lambda n=n: results.setdefault(n, shard()), name=f"shard-{n}") for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    calls = backend.calls
    assert sorted(calls) == ["shard-0"] * 5 + ["shard-1"] * 5
    assert calls == sorted(calls, key=calls.index)  # one shard's five batches, then the other's
    assert all(p.tokens["tokens"] == 30 and p.seconds["model_s"] > 0 for p in results.values())
    # The second shard waited for the whole first shard's turn, not for one batch.
    assert max(p.seconds["model_wait_s"] for p in results.values()) >= 4 * 0.002


def test_a_failed_engine_call_gives_the_model_back():
    scorer = SimpleNamespace(backend=_Backend())
    gate = ModelGate(scorer)
    phases = Phases()
    with pytest.raises(RuntimeError), gate.shard(phases), gate.engine(phases):
        scorer.backend.run(_batch())
        raise RuntimeError("tokenizer failed mid-shard")
    done = threading.Event()

    def other() -> None:
        with gate.shard(Phases()), gate.engine(Phases()):
            scorer.backend.run(_batch())
        done.set()

    threading.Thread(target=other, daemon=True).start()
    assert done.wait(5), "the model stayed locked after a failed shard call"
