"""Errors about data: wrong digests, impossible values, missing source files (one-line messages)."""

from __future__ import annotations


class DataIntegrityError(ValueError):
    """The data is not what it should be (wrong digest, impossible values); the message is one line."""


class DataUnavailable(FileNotFoundError):
    """The raw files of a dataset are not where they should be; the message says how to get them."""
