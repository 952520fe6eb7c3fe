"""The one rule for what counts as a scorable text, shared by the API, the jobs and the server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rayrank.errors import InvalidInputError


def text_problem(value: Any) -> str | None:
    """Why `value` cannot be scored, or None when it is a non-empty, non-blank string."""
    if value is None:
        return "is null"
    if not isinstance(value, str):
        return f"is {type(value).__name__}, not a string"
    if not value.strip():
        return "is empty"
    return None


def check_texts(values: Sequence[Any], what: str) -> None:
    """Raise InvalidInputError naming the first bad position, e.g. 'document at index 3 is null'."""
    for index, value in enumerate(values):
        problem = text_problem(value)
        if problem is not None:
            raise InvalidInputError(f"{what} at index {index} {problem}; expected a non-empty string.")
