"""Builds the publisher and the consumer of this project's broker and consumer style, or of the
in-memory queue where BROKER_URL=memory://."""

from __future__ import annotations
{%- set style = "asynchronous" if cookiecutter.consumer == "async" else "threaded" %}

from ..processing import Processor
from ..runner_{{ style }} import Runner
from ..settings import Settings
from . import memory
from .base import Consumer, Publisher
from .{{ cookiecutter.broker }}.{{ style }} import CLIENT_LOGGERS, BrokerPublisher, BrokerTransport

__all__ = ["CLIENT_LOGGERS", "make_consumer", "make_publisher"]


def make_publisher(settings: Settings) -> Publisher:
    if memory.is_memory(settings):
        return memory.MemoryPublisher(settings)
    return BrokerPublisher(settings)


def make_consumer(settings: Settings, processor: Processor) -> Consumer:
    transport = memory.consumer_transport(settings) if memory.is_memory(settings) else BrokerTransport(settings)
    return Runner(transport, processor, settings)
