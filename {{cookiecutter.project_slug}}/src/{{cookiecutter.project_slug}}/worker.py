"""The consumer alone, for scaling out: `python -m {{ cookiecutter.project_slug }}.worker`."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from . import handlers
from .brokers.factory import CLIENT_LOGGERS, make_consumer
from .brokers.memory import is_memory
from .logs import configure_logging
from .processing import processor_for
from .settings import Settings, get_settings
{%- if cookiecutter.task_store != "none" %}
from .store.factory import make_store
from .store.writer import RecordWriter
{%- endif %}
from .tracing import configure_tracing
from .worker_http import serve

logger = logging.getLogger(__name__)


async def run(settings: Settings) -> None:
    """Consume until SIGTERM or SIGINT, then drain the messages in hand and disconnect."""
{%- if cookiecutter.task_store == "none" %}
    consumer = make_consumer(settings, processor_for(settings, handlers.registry))
{%- else %}
    store = make_store(settings)
    records = RecordWriter(store)
    consumer = make_consumer(settings, processor_for(settings, handlers.registry, records))
{%- endif %}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
{%- if cookiecutter.task_store == "none" %}
    # The API serves /metrics and /health itself; a worker alone serves them here. Ready means consuming.
    http = serve(settings.metrics_port, consumer.is_running) if settings.metrics_port else None
{%- else %}

    def ready() -> bool:
        """Consuming, with the task store taking the records' updates."""
        return consumer.is_running() and records.healthy()

    # The API serves /metrics and /health itself; a worker alone serves them here.
    http = serve(settings.metrics_port, ready) if settings.metrics_port else None
{%- endif %}
    try:
{%- if cookiecutter.task_store != "none" %}
        await store.start()
        await records.start()
{%- endif %}
        await consumer.start()
        await stop.wait()
        logger.info("stop signal received: taking no new messages, finishing those in hand")
        await consumer.stop()
    finally:
{%- if cookiecutter.task_store != "none" %}
        await records.stop()
        await store.close()
{%- endif %}
        if http is not None:
            http.close()
    logger.info("worker stopped")


def main() -> None:
    settings = get_settings()
    if is_memory(settings):
        sys.exit(
            "ERROR: BROKER_URL=memory:// keeps tasks in the API process's own memory, which a worker alone"
            f" cannot share; run the API (uvicorn {__package__}.main:app), or point BROKER_URL at the broker"
        )
    configure_logging(settings.log_level, settings.log_format, quiet=CLIENT_LOGGERS)
    configure_tracing(settings)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
