"""Builds the publisher and the consumer of this project's broker and consumer style."""

from __future__ import annotations
{%- set style = "asynchronous" if cookiecutter.consumer == "async" else "threaded" %}

from ..processing import Processor
from ..runner_{{ style }} import Runner
from ..settings import Settings
from .base import Consumer, Publisher
from .{{ cookiecutter.broker }}.{{ style }} import CLIENT_LOGGERS, BrokerPublisher, BrokerTransport

__all__ = ["CLIENT_LOGGERS", "make_consumer", "make_publisher"]


def make_publisher(settings: Settings) -> Publisher:
    return BrokerPublisher(settings)


def make_consumer(settings: Settings, processor: Processor) -> Consumer:
    return Runner(BrokerTransport(settings), processor, settings)
