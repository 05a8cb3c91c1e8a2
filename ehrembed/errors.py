"""The one error family: what a front end may show a user, and nothing else.

``EhrembedError`` has three kinds, each a promise about the message (written for people, naming
the field, file or row at fault, never holding record text):

- :class:`InputError` — the input cannot be used as given (a malformed file, a time out of range,
  an unknown option). HTTP 400 / 422, CLI exit 2. It is also a ``ValueError``, as Python's
  convention for bad values asks.
- :class:`NotFoundError` — a named thing does not exist (a subject, a head, a dataset). HTTP 404,
  CLI exit 2. Also a ``LookupError``.
- :class:`ConflictError` — the request is valid but the current state forbids it (a name taken).
  HTTP 409, CLI exit 2.

Every stage's error subclasses one of them (``MedsError``, ``FhirError``, ``TaskError``...). The
API and the CLI catch only this family: any other exception is a bug, answered with a 500 that
carries a request id (the traceback goes to the log) or a CLI traceback, never shown as bad input.
"""

from __future__ import annotations


class EhrembedError(Exception):
    """Base of every error a front end may show a user as it is."""


class InputError(EhrembedError, ValueError):
    """The input cannot be used as given; the message names the field, file or row and the problem."""


class NotFoundError(EhrembedError, LookupError):
    """A named thing (subject, dataset, head, artifact, task) does not exist."""

    def __str__(self) -> str:  # LookupError's KeyError-style repr() of the message is not for people
        return str(self.args[0]) if self.args else "not found"


class ConflictError(EhrembedError):
    """The request is valid but the current state forbids it (a name already taken...)."""
