"""The one rule for what counts as a scorable text, shared by the API, the jobs and the server.

A text is scorable when it holds at least one character that is not white space. White space is
exactly what Python's `str.isspace` says it is (tab, newline, the information separators U+001C-U+001F,
no-break space, the line and paragraph separators, ...): a text of nothing else is refused as empty
everywhere, because tokenizers drop it and the model would score a document it never read. Any
other character, a control character included, is text and is scored as it is.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from rayrank.errors import InvalidInputError

# Every code point that `str.isspace` (and so `str.strip`) treats as white space.
WHITESPACE = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())


def _escape(char: str) -> str:
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


# The rule as a JSON Schema `pattern`: some character outside WHITESPACE. Spelled as an explicit class
# because `\S` differs between regex dialects (ECMA-262's lacks U+001C-U+001F, Python's has them).
NON_BLANK_PATTERN = "[^" + "".join(_escape(c) for c in WHITESPACE) + "]"


def text_problem(value: Any) -> str | None:
    """Why `value` cannot be scored, or None when it holds a character that is not white space.

    Example:
        >>> text_problem("\\u00a0\\u2028"), text_problem("\\x01"), text_problem(None)
        ('is only white space', None, 'is null')
    """
    if value is None:
        return "is null"
    if not isinstance(value, str):
        return f"is {type(value).__name__}, not a string"
    if not value:
        return "is empty"
    if value.isspace():
        return "is only white space"
    return None


def check_texts(values: Sequence[Any], what: str) -> None:
    """Raise InvalidInputError naming the first bad position, e.g. 'document at index 3 is null'."""
    for index, value in enumerate(values):
        problem = text_problem(value)
        if problem is not None:
            raise InvalidInputError(f"{what} at index {index} {problem}; expected a string with a character "
                                    "that is not white space.")
