"""Builds the publisher and the consumer of this project's broker and consumer style, or of the
in-memory queue where BROKER_URL=memory://."""

from __future__ import annotations
{%- set style = "asynchronous" if cookiecutter.consumer == "async" else "threaded" %}

from typing import TYPE_CHECKING

from ..processing import Processor
from ..runner_{{ style }} import Runner
from ..settings import Settings
from . import memory
from .base import BrokerUnavailable, Consumer, Publisher
from .{{ cookiecutter.broker }}.{{ style }} import CLIENT_LOGGERS, BrokerPublisher, BrokerTransport

if TYPE_CHECKING:
    from ..deadletters import DeadLetterQueue

__all__ = ["CLIENT_LOGGERS", "make_consumer", "make_publisher", "open_dead_letters"]


def make_publisher(settings: Settings) -> Publisher:
    if memory.is_memory(settings):
        return memory.MemoryPublisher(settings)
    return BrokerPublisher(settings)


def make_consumer(settings: Settings, processor: Processor) -> Consumer:
    transport = memory.consumer_transport(settings) if memory.is_memory(settings) else BrokerTransport(settings)
    return Runner(transport, processor, settings)


def open_dead_letters(settings: Settings) -> DeadLetterQueue:
    """The dead letters, over a connection of the tool's own; BrokerUnavailable if it cannot have one."""
    if memory.is_memory(settings):
        raise BrokerUnavailable("BROKER_URL=memory:// keeps dead letters in the API process's memory, out of reach")
    from .{{ cookiecutter.broker }}.deadletters import open_dead_letters as open_queue  # the tool's alone

    return open_queue(settings)
