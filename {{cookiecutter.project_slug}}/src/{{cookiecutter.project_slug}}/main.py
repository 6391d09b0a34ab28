"""The ASGI entry point: `uvicorn {{ cookiecutter.project_slug }}.main:app`."""

from __future__ import annotations

from .app import create_app
from .brokers import CLIENT_LOGGERS
from .logs import configure_logging
from .settings import get_settings

settings = get_settings()
configure_logging(settings.log_level, quiet=CLIENT_LOGGERS)
app = create_app(settings)
