"""The ASGI entry point: `uvicorn {{ cookiecutter.project_slug }}.main:app`."""

from __future__ import annotations

from .app import create_app
from .logs import configure_logging
from .settings import get_settings

settings = get_settings()
configure_logging(settings.log_level)
app = create_app(settings)
