"""Errors rayrank raises on purpose: one tree under `RayrankError`.

Each names the bad value and what to do about it, so a user never has to read a traceback; the
`rayrank` commands print any of them as `rayrank CMD: error: MESSAGE` (rayrank.cli.command).
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
    """A configuration file or option is invalid, or options that cannot run together; the message names the key."""


class UnsupportedModelError(RayrankError, ValueError):
    """A checkpoint rayrank cannot score right (unknown head, template or family); the message says what it
    supports and how to make the checkpoint fit, because a model must never score silently wrong."""


class InputNotFoundError(RayrankError, FileNotFoundError):
    """An input path names nothing, or no Parquet file."""


class InputSchemaError(RayrankError, ValueError):
    """An input file cannot be read or lacks a required column; raised before any scoring."""


class IndexFormatError(RayrankError, ValueError):
    """INDEX_DIR is not a finished rayrank index, does not match its manifest, or was built by another model."""


class OutputConflictError(RayrankError, FileExistsError):
    """OUTPUT holds something other than this job's (partial) results and --overwrite was not given."""


class StorageError(RayrankError, RuntimeError):
    """A storage operation still failed after retries; the message names the operation and the path."""


class ServiceUnavailableError(RayrankError, RuntimeError):
    """An HTTP service a command measures answered no request."""


class MissingExtraError(RayrankError, ImportError):
    """A feature needs a package of an optional extra that is not installed; the message names the pip command."""
