import numpy as np
import pytest

from rayrank.batching import pad, plan_batches
from rayrank.errors import BatchTooLargeError, InvalidInputError


def test_every_row_once_within_budget_longest_first():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=500)
    batches = plan_batches(lengths, max_tokens=1000, max_batch_size=16)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(500))
    for batch in batches:
        assert len(batch) <= 16
        assert len(batch) * lengths[batch].max() <= 1000  # padding counted
    firsts = [lengths[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)


def test_batch_size_cap_and_single_rows():
    assert [b.tolist() for b in plan_batches([5, 5, 5], max_tokens=100, max_batch_size=1)] == [[0], [1], [2]]


def test_empty_and_errors():
    assert plan_batches([], max_tokens=10, max_batch_size=4) == []
    with pytest.raises(BatchTooLargeError, match="row 1 has 11 tokens, more than max_tokens_per_batch=10"):
        plan_batches([3, 11], max_tokens=10, max_batch_size=4)
    with pytest.raises(InvalidInputError, match="must be positive"):
        plan_batches([3], max_tokens=0, max_batch_size=4)


def test_pad():
    out = pad([[1, 2, 3], [4]], pad_value=9)
    assert out.dtype == np.int64
    assert out.tolist() == [[1, 2, 3], [4, 9, 9]]


def _cost(lengths, batches, overhead):
    return sum(len(b) * lengths[b].max() + overhead for b in batches)


def _brute_force(sorted_lengths, max_tokens, max_batch_size, overhead):
    """Cheapest cut of longest-first lengths into runs, over every one of the 2^(n-1) cuts."""
    n, best = len(sorted_lengths), None
    for mask in range(2 ** (n - 1)):
        bounds = [0] + [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        runs = [sorted_lengths[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        if any(len(r) > max_batch_size or len(r) * r[0] > max_tokens for r in runs):
            continue
        cost = sum(len(r) * r[0] + overhead for r in runs)
        best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_plan_is_the_cheapest_cut(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, size=int(rng.integers(1, 10)))
    overhead = int(rng.integers(0, 80))
    batches = plan_batches(lengths, max_tokens=150, max_batch_size=4, batch_overhead_tokens=overhead)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert _cost(lengths, batches, overhead) == _brute_force(np.sort(lengths)[::-1], 150, 4, overhead)


@pytest.mark.parametrize("seed", range(30))
def test_plan_is_the_cheapest_cut_with_repeated_lengths(seed):
    """Runs of equal lengths longer than a full batch: the planner only visits some boundaries there."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 4, size=int(rng.integers(1, 15))) * 10
    cap, overhead = int(rng.integers(1, 5)), int(rng.integers(0, 40))
    batches = plan_batches(lengths, max_tokens=90, max_batch_size=cap, batch_overhead_tokens=overhead)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert _cost(lengths, batches, overhead) == _brute_force(np.sort(lengths)[::-1], 90, cap, overhead)


def test_cutting_saves_padding_on_a_small_varied_set():
    """A 60-row shard of passage-like lengths: filling batches to the budget pads far more."""
    lengths = np.random.default_rng(0).lognormal(4.3, 0.45, size=60).astype(int) + 8
    filled = plan_batches(lengths, max_tokens=8192, max_batch_size=128, batch_overhead_tokens=10**6)
    cut = plan_batches(lengths, max_tokens=8192, max_batch_size=128, batch_overhead_tokens=32)
    padded = lambda batches: sum(len(b) * lengths[b].max() for b in batches) / lengths.sum()
    assert padded(filled) > 1.3
    assert padded(cut) < 1.05
