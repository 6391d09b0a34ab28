"""Builds this project's task store, or one in memory where TASK_STORE_URL=memory://."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..settings import Settings
from .base import TaskStore
from .memory import MemoryStore
from .{{ cookiecutter.task_store }} import open_store


def make_store(settings: Settings) -> TaskStore:
    if urlsplit(settings.task_store_url).scheme == "memory":
        return MemoryStore(settings.task_record_ttl_seconds)
    return open_store(settings)
