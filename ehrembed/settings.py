"""Runtime settings from the environment (``EHREMBED_*``), resolved once per call site.

``EHREMBED_HOME`` holds the SQLite store, converted models and caches (default ``~/.ehrembed``);
``EHREMBED_DATABASE_URL`` points the store at another database, e.g.
``postgresql+psycopg://user@host:5432/ehrembed``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where ehrembed keeps its state. Every field reads ``EHREMBED_<FIELD>`` from the environment."""

    model_config = SettingsConfigDict(env_prefix="EHREMBED_", frozen=True)

    home: Path = Field(default_factory=lambda: Path.home() / ".ehrembed")
    database_url: str | None = None
    api_encoders: tuple[str, ...] = ("student",)
    """Encoders the API loads at startup and accepts by name (``EHREMBED_API_ENCODERS='["student"]'``);
    models registered in the store (``ehrembed distill``) are accepted by their artifact name too."""
    guidelines_kb: Path | None = None
    """The guideline knowledge base the API searches (default ``<home>/guidelines/default`` if built)."""
    max_request_bytes: int = 2_000_000
    """Larger request bodies are refused with 413."""
    api_max_heads: int = Field(default=256, ge=1)
    """Fitted heads the API keeps in memory (least recently used go first; they reload from the store)."""

    @property
    def resolved_database_url(self) -> str:
        """The configured URL, else a SQLite file under the data home."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'ehrembed.db'}"


def get_settings() -> Settings:
    """Fresh settings from the current environment (cheap; no caching, so tests can set env vars)."""
    return Settings()
