"""Errors the store raises with messages meant for people (CLI output, API error bodies)."""

from __future__ import annotations


class StoreError(ValueError):
    """A store operation cannot proceed: bad input, unknown name, bad database URL, ..."""


class NotFoundError(StoreError):
    """A named dataset, artifact, task or API key does not exist (an API answers 404)."""


class ConflictError(StoreError):
    """The operation would break a uniqueness rule, e.g. a second active key of one name (409)."""
