"""SQLAlchemy 2.0 declarative tables of the store.

Every timestamp column holds a **naive UTC** datetime (``TIMESTAMP WITHOUT TIME ZONE`` on
PostgreSQL, ISO text on SQLite): the repository converts timezone-aware inputs to UTC and drops
the zone before writing, and everything read back is naive UTC. Label prediction times are MEDS
times, which are naive as well (see :mod:`ehrembed.schema`).

Enumerations (:class:`DatasetSource`, :class:`ArtifactKind`, :class:`ApiScope`, splits) are kept
as their string *values* in ``VARCHAR`` columns (no native database enum), so adding a member
needs no migration. JSON columns use :class:`sqlalchemy.JSON`, which is ``JSON`` on PostgreSQL
and text on SQLite.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ehrembed.schema import Split

# An auto-incrementing 64-bit id; SQLite only auto-increments ``INTEGER PRIMARY KEY`` (its
# integers are 64-bit anyway).
IdType = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> dt.datetime:
    """The current time as the store keeps it: naive UTC, microsecond precision."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def to_naive_utc(value: dt.datetime) -> dt.datetime:
    """An aware datetime converted to UTC without its zone; a naive one unchanged."""
    if value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


class DatasetSource(StrEnum):
    """Where a dataset's MEDS events came from."""

    OMOP = "omop"
    FHIR = "fhir"
    MEDS = "meds"
    SYNTH = "synth"


class ArtifactKind(StrEnum):
    """What a registered file or folder is."""

    EMBEDDINGS = "embeddings"
    INDEX = "index"
    MODEL = "model"
    HEAD = "head"
    REPORT = "report"


class ApiScope(StrEnum):
    """What an API key may do; each scope includes the ones before it (read < write < admin)."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


def _enum(cls: type[StrEnum]) -> Enum:
    """A VARCHAR column type holding the enum's values (not its member names)."""
    return Enum(
        cls,
        native_enum=False,
        create_constraint=False,
        length=32,
        validate_strings=True,
        values_callable=lambda members: [m.value for m in members],
    )


# Stable constraint names, so that later migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every store table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        dict[str, Any]: JSON,
        list[int]: JSON,
        dt.datetime: DateTime(timezone=False),
    }


class Dataset(Base):
    """A MEDS dataset on disk, registered by a unique name."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    path: Mapped[str] = mapped_column(Text)
    source: Mapped[DatasetSource] = mapped_column(_enum(DatasetSource))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    n_subjects: Mapped[int] = mapped_column(BigInteger, default=0)
    n_events: Mapped[int] = mapped_column(BigInteger, default=0)
    fingerprint: Mapped[str] = mapped_column(String(64))
    """SHA-256 (hex) of the code metadata and shard files, computed by the caller."""
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)

    def __repr__(self) -> str:
        return f"Dataset(id={self.id!r}, name={self.name!r}, source={self.source!r}, n_subjects={self.n_subjects!r})"


class Subject(Base):
    """A subject of a dataset and its patient-level split."""

    __tablename__ = "subjects"

    dataset_id: Mapped[int] = mapped_column(IdType, ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    subject_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    split: Mapped[Split] = mapped_column(_enum(Split))
    source_id: Mapped[str | None] = mapped_column(String(200), default=None)

    __table_args__ = (Index("ix_subjects_dataset_split", "dataset_id", "split"),)


class Artifact(Base):
    """A file or folder ehrembed produced (embeddings, index, model, head, report)."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    dataset_id: Mapped[int | None] = mapped_column(
        IdType, ForeignKey("datasets.id", ondelete="SET NULL"), default=None, index=True
    )
    kind: Mapped[ArtifactKind] = mapped_column(_enum(ArtifactKind))
    name: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Free-form description: encoder spec, training config, metrics, ..."""

    dataset: Mapped[Dataset | None] = relationship(lazy="joined")

    __table_args__ = (UniqueConstraint("kind", "name", name="uq_artifacts_kind_name"),)

    def __repr__(self) -> str:
        return f"Artifact(id={self.id!r}, kind={self.kind!r}, name={self.name!r}, path={self.path!r})"


class Task(Base):
    """A prediction task, by name, with its (labeler-specific) JSON definition."""

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    definition: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"Task(id={self.id!r}, name={self.name!r})"


class LabelRow(Base):
    """One label of a task on a dataset; at most one per (subject, prediction time)."""

    __tablename__ = "labels"

    task_id: Mapped[int] = mapped_column(IdType, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(IdType, ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    subject_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    prediction_time: Mapped[dt.datetime] = mapped_column(primary_key=True)
    value: Mapped[float] = mapped_column(Float)


class ApiKey(Base):
    """An API key. Only the SHA-256 of the secret is kept; the secret itself is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    scope: Mapped[ApiScope] = mapped_column(_enum(ApiScope))
    key_prefix: Mapped[str] = mapped_column(String(8), index=True)
    """The secret's first 8 characters, for display and lookup."""
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """SHA-256 (hex) of the whole secret."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    # A name identifies one *active* key; a revoked key's name may be reused (key rotation).
    __table_args__ = (
        Index(
            "uq_api_keys_active_name",
            "name",
            unique=True,
            sqlite_where=revoked_at.is_(None),
            postgresql_where=revoked_at.is_(None),
        ),
    )

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def __repr__(self) -> str:
        return (
            f"ApiKey(id={self.id!r}, name={self.name!r}, scope={self.scope!r}, "
            f"prefix={self.key_prefix!r}, revoked={self.revoked_at is not None})"
        )


class AuditLog(Base):
    """One API request that touched patient data or changed state."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    time: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    api_key_id: Mapped[int | None] = mapped_column(
        IdType, ForeignKey("api_keys.id", ondelete="SET NULL"), default=None, index=True
    )
    endpoint: Mapped[str] = mapped_column(String(500))
    method: Mapped[str] = mapped_column(String(16))
    subject_ids: Mapped[list[int]] = mapped_column(default=list)
    dataset: Mapped[str | None] = mapped_column(String(200), default=None)
    """Dataset *name* (not a foreign key: the audit trail outlives deleted datasets)."""
    status_code: Mapped[int] = mapped_column(Integer)
