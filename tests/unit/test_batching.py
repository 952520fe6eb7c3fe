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
