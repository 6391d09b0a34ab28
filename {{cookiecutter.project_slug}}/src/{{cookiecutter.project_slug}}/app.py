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
from .tasks import TaskRegistry


def create_app(
    settings: Settings,
    *,
    registry: TaskRegistry = handlers.registry,
    publisher: Publisher | None = None,
    consumer: Consumer | None = None,
) -> FastAPI:
    """Build the app; tests pass their own publisher or consumer, the service builds the broker's."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.registry = registry
        app.state.publisher = publisher or make_publisher(settings)
        app.state.consumer = consumer
        if consumer is None and settings.consumer_enabled:
            app.state.consumer = make_consumer(settings, processor_for(settings, registry))
        await app.state.publisher.start()
        if app.state.consumer is not None:
            await app.state.consumer.start()
        try:
            yield
        finally:
            if app.state.consumer is not None:
                await app.state.consumer.stop()
            await app.state.publisher.close()

    app = FastAPI(title={{ cookiecutter.project_name | tojson }}, lifespan=lifespan)
    app.include_router(router)
    app.add_middleware(BodySizeLimit)
    app.add_middleware(RequestId)
    return app
