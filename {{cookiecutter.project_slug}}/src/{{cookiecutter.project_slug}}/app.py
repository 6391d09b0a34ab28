"""Assembles the FastAPI app: routes, middleware, and the broker connections its lifespan owns."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import handlers
from .api import router
from .brokers import Consumer, Publisher
from .brokers.factory import make_consumer, make_publisher
from .middleware import BodySizeLimit, RequestId
from .processing import processor_for
from .settings import Settings
{%- if cookiecutter.task_store != "none" %}
from .store import TaskStore
from .store.factory import make_store
from .store.writer import RecordWriter
{%- endif %}
from .tasks import TaskRegistry


def create_app(
    settings: Settings,
    *,
    registry: TaskRegistry = handlers.registry,
    publisher: Publisher | None = None,
    consumer: Consumer | None = None,
{%- if cookiecutter.task_store != "none" %}
    store: TaskStore | None = None,
{%- endif %}
) -> FastAPI:
{%- if cookiecutter.task_store == "none" %}
    """Build the app; tests pass their own publisher or consumer, the service builds the broker's."""
{%- else %}
    """Build the app; tests pass their own publisher, consumer or task store, the service builds its own."""
{%- endif %}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.registry = registry
        app.state.publisher = publisher or make_publisher(settings)
{%- if cookiecutter.task_store != "none" %}
        app.state.store = store or make_store(settings)
        records = RecordWriter(app.state.store) if consumer is None and settings.consumer_enabled else None
{%- endif %}
        app.state.consumer = consumer
        if consumer is None and settings.consumer_enabled:
{%- if cookiecutter.task_store == "none" %}
            app.state.consumer = make_consumer(settings, processor_for(settings, registry))
        await app.state.publisher.start()
{%- else %}
            app.state.consumer = make_consumer(settings, processor_for(settings, registry, records))
        await app.state.publisher.start()
        await app.state.store.start()
        if records is not None:
            await records.start()
{%- endif %}
        if app.state.consumer is not None:
            await app.state.consumer.start()
        try:
            yield
        finally:
            if app.state.consumer is not None:
                await app.state.consumer.stop()
{%- if cookiecutter.task_store != "none" %}
            if records is not None:
                await records.stop()
            await app.state.store.close()
{%- endif %}
            await app.state.publisher.close()

    app = FastAPI(title={{ cookiecutter.project_name | tojson }}, lifespan=lifespan)
    app.include_router(router)
    app.add_middleware(BodySizeLimit)
    app.add_middleware(RequestId)
    return app
