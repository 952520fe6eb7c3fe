"""Token-budget batch planning and padding.

Batches are planned longest-first so that `rows × longest ≤ max_tokens` counts the padding that
actually runs; a fixed pair count (what `CrossEncoder.predict` does) either wastes compute on
padding or runs tiny batches of short pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rayrank.errors import BatchTooLargeError, InvalidInputError


def plan_batches(lengths: Sequence[int] | np.ndarray, max_tokens: int, max_batch_size: int) -> list[np.ndarray]:
    """Split row indices into batches, longest first, within a padded-token budget.

    Args:
        lengths: token count of each row.
        max_tokens: budget of one batch, padding included (rows × longest row).
        max_batch_size: cap on rows per batch.

    Returns:
        Index arrays into `lengths`; together they cover every row exactly once.

    Raises:
        BatchTooLargeError: a single row is longer than `max_tokens`.

    Example:
        >>> [b.tolist() for b in plan_batches([3, 9, 4, 8], max_tokens=18, max_batch_size=8)]
        [[1, 3], [2, 0]]
    """
    if max_tokens <= 0 or max_batch_size <= 0:
        raise InvalidInputError(
            f"max_tokens and max_batch_size must be positive, got {max_tokens} and {max_batch_size}."
        )
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0:
        return []
    order = np.argsort(-lengths, kind="stable")
    longest = int(lengths[order[0]])
    if longest > max_tokens:
        raise BatchTooLargeError(
            f"row {int(order[0])} has {longest} tokens, more than max_tokens_per_batch={max_tokens}; "
            "raise max_tokens_per_batch or lower max_length."
        )
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        # The first row of a batch is its longest, so the batch may hold max_tokens // longest rows.
        rows = min(max_batch_size, max_tokens // int(lengths[order[start]]), n - start)
        batches.append(order[start : start + rows])
        start += rows
    return batches


def pad(sequences: Sequence[Sequence[int]], pad_value: int = 0) -> np.ndarray:
    """Right-pad integer sequences into an int64 matrix of shape (rows, longest)."""
    width = max((len(s) for s in sequences), default=0)
    out = np.full((len(sequences), width), pad_value, dtype=np.int64)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = seq
    return out
