"""The ASGI entry point: `uvicorn {{ cookiecutter.project_slug }}.main:app`."""

from __future__ import annotations

from .app import create_app
from .brokers.factory import CLIENT_LOGGERS
from .logs import configure_logging
from .settings import get_settings
from .tracing import configure_tracing

settings = get_settings()
configure_logging(settings.log_level, settings.log_format, quiet=CLIENT_LOGGERS)
configure_tracing(settings)
app = create_app(settings)
