"""librdkafka's log lines and error events, through Python logging, without the flood: it
reports each failed connect, several a second while the broker is down."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError

logger = logging.getLogger(__name__)

# librdkafka's log lines, through Python logging (served by poll). It logs every failed connect; ours say it once.
CLIENT_LOGGERS = ("confluent_kafka",)
client_logger = logging.getLogger(CLIENT_LOGGERS[0])

OUTAGE_LOG_SECONDS = 60.0  # how often a client says again that it cannot reach Kafka


class ClientLog:
    """One client's log lines and error events. librdkafka reports each failed connect, several a
    second while the broker is down: those go to DEBUG, and the outage is said once a minute."""

    def __init__(self, name: str, on_fatal: Callable[[KafkaError], None] | None) -> None:
        self._name = name
        self._on_fatal = on_fatal
        self._outage_logged = -OUTAGE_LOG_SECONDS

    def log(self, level: int, message: str, *args: Any) -> None:
        """The `logger` librdkafka calls: `log(level, "%s [%s] %s", facility, client, text)`."""
        client_logger.log(logging.DEBUG if args[:1] == ("FAIL",) else level, message, *args)

    def on_error(self, error: KafkaError) -> None:
        if error.fatal():
            logger.error("%s failed for good: %s", self._name, error)
            if self._on_fatal is not None:
                self._on_fatal(error)
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            if time.monotonic() - self._outage_logged >= OUTAGE_LOG_SECONDS:
                self._outage_logged = time.monotonic()
                logger.warning("%s cannot reach Kafka (it keeps trying): %s", self._name, error)
        else:
            logger.debug("%s: %s", self._name, error)
