"""The HTTP API: ``create_app()`` builds the FastAPI application (see :mod:`ehrembed.api.app`)."""

from ehrembed.api.app import create_app

__all__ = ["create_app"]
