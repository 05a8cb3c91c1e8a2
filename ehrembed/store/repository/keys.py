"""API keys: created with a secret shown once (only its SHA-256 kept), verified, revoked; scopes."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from ehrembed.store.errors import ConflictError, NotFoundError
from ehrembed.store.repository.common import _check_name, _coerce
from ehrembed.store.tables import (
    ApiKey,
    ApiScope,
    utcnow,
)

API_KEY_PREFIX = "ehr_"
"""Every secret starts with this, followed by ``secrets.token_urlsafe(32)`` (256 random bits)."""

_KEY_PREFIX_LEN = 8
_SCOPE_RANK = {ApiScope.READ: 0, ApiScope.WRITE: 1, ApiScope.ADMIN: 2}


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_api_key(session: Session, name: str, scope: ApiScope | str) -> tuple[ApiKey, str]:
    """A new API key; returns the row and the secret, which is shown this once and never stored.

    The secret is ``ehr_`` plus 256 random bits (``secrets.token_urlsafe(32)``); the row keeps its
    first 8 characters (``key_prefix``) and its SHA-256. A name may belong to one active key at a
    time (:class:`ConflictError` otherwise); revoke the old key to reuse the name.
    """
    _check_name(name, "API key")
    scope_value = _coerce(ApiScope, scope, "API key scope")
    clash = session.scalar(select(ApiKey.id).where(ApiKey.name == name, ApiKey.revoked_at.is_(None)))
    if clash is not None:
        raise ConflictError(f"an active API key named {name!r} already exists; revoke it or pick another name")
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        name=name,
        scope=scope_value,
        key_prefix=secret[:_KEY_PREFIX_LEN],
        key_hash=_hash_secret(secret),
        created_at=utcnow(),
    )
    session.add(key)
    session.flush()
    return key, secret


def verify_api_key(session: Session, secret: str) -> ApiKey | None:
    """The active key whose secret this is (its ``last_used_at`` set to now), else ``None``.

    Hashes are compared with :func:`hmac.compare_digest`; revoked keys and malformed secrets give
    ``None``.
    """
    if not isinstance(secret, str) or not secret.startswith(API_KEY_PREFIX) or len(secret) > 256:
        return None
    digest = _hash_secret(secret)
    candidates = session.scalars(select(ApiKey).where(ApiKey.key_prefix == secret[:_KEY_PREFIX_LEN])).all()
    match: ApiKey | None = None
    for candidate in candidates:  # compare against every candidate: timing does not tell which
        if hmac.compare_digest(candidate.key_hash, digest):
            match = candidate
    if match is None or match.revoked_at is not None:
        return None
    match.last_used_at = utcnow()
    session.flush()
    return match


def get_api_key(session: Session, key: int | str) -> ApiKey:
    """A key by id, or the active key of a name; :class:`NotFoundError` if none."""
    if isinstance(key, int):
        row = session.get(ApiKey, key)
    else:
        row = session.scalar(select(ApiKey).where(ApiKey.name == key, ApiKey.revoked_at.is_(None)))
    if row is None:
        what = "API key with id" if isinstance(key, int) else "active API key named"
        raise NotFoundError(f"no {what} {key!r}")
    return row


def revoke_api_key(session: Session, key: int | str) -> ApiKey:
    """Revoke a key (by id, or the active key of a name); revoking twice keeps the first time."""
    row = get_api_key(session, key)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def list_api_keys(session: Session, include_revoked: bool = False) -> list[ApiKey]:
    """API keys (active ones unless ``include_revoked``), oldest first."""
    query = select(ApiKey)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query.order_by(ApiKey.created_at, ApiKey.id)))


def scope_allows(key_scope: ApiScope | str, required: ApiScope | str) -> bool:
    """Whether a key of ``key_scope`` may do what needs ``required`` (read < write < admin)."""
    have = _coerce(ApiScope, key_scope, "API key scope")
    need = _coerce(ApiScope, required, "API key scope")
    return _SCOPE_RANK[have] >= _SCOPE_RANK[need]
