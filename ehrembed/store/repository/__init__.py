"""Repository: plain functions over a :class:`~sqlalchemy.orm.Session`.

Functions add, change and query rows and ``flush`` when they need database ids; they never
commit. Wrap a unit of work in :func:`ehrembed.store.db.session_scope`, which commits at the end
of the block and rolls everything back if it raises::

    with session_scope(engine) as session:
        register_dataset(session, "eunomia", path, "omop", n, m, fingerprint, {}, splits)

Lookups of a missing name raise :class:`NotFoundError`, invalid input :class:`StoreError`, and
broken uniqueness rules :class:`ConflictError` (the :mod:`ehrembed.errors` family). Timestamps are naive UTC
(aware inputs are converted); see :mod:`ehrembed.store.tables`.

One resource a module: ``datasets``, ``artifacts``, ``tasks`` (and labels), ``keys``, ``audit``;
``common`` holds what they share.
"""

from ehrembed.store.repository.artifacts import (
    current_artifact,
    delete_artifact,
    get_artifact,
    list_artifacts,
    register_artifact,
)
from ehrembed.store.repository.audit import AuditEntry, audit, audit_many, finish_audit, list_audit
from ehrembed.store.repository.common import SplitsLike
from ehrembed.store.repository.datasets import (
    delete_dataset,
    get_dataset,
    get_subjects,
    list_datasets,
    register_dataset,
)
from ehrembed.store.repository.keys import (
    API_KEY_PREFIX,
    create_api_key,
    get_api_key,
    list_api_keys,
    revoke_api_key,
    scope_allows,
    verify_api_key,
)
from ehrembed.store.repository.tasks import count_labels, get_labels, get_task, list_tasks, replace_labels, upsert_task

__all__ = [
    "API_KEY_PREFIX",
    "AuditEntry",
    "SplitsLike",
    "audit",
    "audit_many",
    "count_labels",
    "create_api_key",
    "current_artifact",
    "delete_artifact",
    "delete_dataset",
    "finish_audit",
    "get_api_key",
    "get_artifact",
    "get_dataset",
    "get_labels",
    "get_subjects",
    "get_task",
    "list_api_keys",
    "list_artifacts",
    "list_audit",
    "list_datasets",
    "list_tasks",
    "register_artifact",
    "register_dataset",
    "replace_labels",
    "revoke_api_key",
    "scope_allows",
    "upsert_task",
    "verify_api_key",
]
