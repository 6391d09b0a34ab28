"""The broker this project was generated for, behind the Publisher and Consumer protocols."""

from __future__ import annotations

from ..processing import Processor
from ..settings import Settings
from .base import Backoff, BrokerUnavailable, Consumer, Publisher
from .{{ cookiecutter.broker }}_{{ cookiecutter.consumer }} import CLIENT_LOGGERS, BrokerConsumer, BrokerPublisher

__all__ = ["CLIENT_LOGGERS", "Backoff", "BrokerUnavailable", "Consumer", "Publisher", "make_consumer", "make_publisher"]


def make_publisher(settings: Settings) -> Publisher:
    return BrokerPublisher(settings)


def make_consumer(settings: Settings, processor: Processor) -> Consumer:
    return BrokerConsumer(settings, processor)
