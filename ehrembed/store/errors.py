"""Errors the store raises with messages meant for people (CLI output, API error bodies).

They belong to the one family in :mod:`ehrembed.errors`: a store that cannot be used as configured
is an input error; an unknown name is a not-found; a uniqueness rule is a conflict.
"""

from __future__ import annotations

from ehrembed import errors


class StoreError(errors.InputError):
    """A store operation cannot proceed as asked: bad input, bad database URL, unreachable database."""


class NotFoundError(errors.NotFoundError):
    """A named dataset, artifact, task or API key does not exist (an API answers 404)."""


class ConflictError(errors.ConflictError):
    """The operation would break a uniqueness rule, e.g. a second active key of one name (409)."""
