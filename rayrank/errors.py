"""Errors rayrank raises at its boundaries.

Each names the bad value and what to do about it, so a user never has to read a traceback.
"""


class RayrankError(Exception):
    """Base class for every error rayrank raises on purpose."""


class InvalidInputError(RayrankError, ValueError):
    """A query or document is not a non-empty string, or a parameter is out of range."""


class ModelUnavailableError(RayrankError, OSError):
    """No source could provide the requested model (local directory, Hugging Face, installed package)."""


class BatchTooLargeError(InvalidInputError):
    """A single sequence is longer than the token budget of one batch."""


class ConfigError(RayrankError, ValueError):
    """A configuration file or option is invalid; the message names the key."""


class UnsupportedModelError(RayrankError, ValueError):
    """A checkpoint rayrank cannot score right (unknown head, template or family); the message says what it
    supports and how to make the checkpoint fit, because a model must never score silently wrong."""
