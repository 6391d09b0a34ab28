"""The broker this project was generated for: its settings and names. `factory` builds its
publisher and consumer; each broker lives in a package of its own beside this file."""

from __future__ import annotations

from .base import BrokerUnavailable, Consumer, Delivery, OutcomeUnknown, Publisher
from .{{ cookiecutter.broker }}.settings import BROKER_SCHEMES, DEFAULT_BROKER_URL, MESSAGING_SYSTEM, BrokerSettings

__all__ = [
    "BROKER_SCHEMES",
    "DEFAULT_BROKER_URL",
    "MESSAGING_SYSTEM",
    "BrokerSettings",
    "BrokerUnavailable",
    "Consumer",
    "Delivery",
    "OutcomeUnknown",
    "Publisher",
]
