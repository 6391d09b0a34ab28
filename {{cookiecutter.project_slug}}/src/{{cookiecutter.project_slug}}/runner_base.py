"""What the runner of either consumer style says, in the same words for every broker."""

from __future__ import annotations

import logging
import re
import time

logger = logging.getLogger(__name__)

OUTAGE_LOG_SECONDS = 60.0  # how often a lasting outage is logged again
# What the clients' errors say when the broker refused who we are, not that it was unreachable.
REFUSED = re.compile(r"authenticat|access.?refused|not.?allowed|wrongpass|noauth|\bauth\b|sasl|authoriz|permission")


class OutageLog:
    """Says that the broker is unreachable once, again once a minute while it lasts, and when it is back."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._since: float | None = None
        self._logged = 0.0

    def failed(self, error: BaseException) -> None:
        now = time.monotonic()
        if self._since is None or now - self._logged >= OUTAGE_LOG_SECONDS:
            lasting = "" if self._since is None else f" (for {now - self._since:.0f} s; still trying)"
            verb = "was refused by the broker" if refused(error) else "lost the broker"
            logger.warning("%s %s: %s%s", self._what, verb, describe(error), lasting)
            self._logged = now
            self._since = self._since or now
        else:
            logger.debug("%s still cannot reach the broker: %s", self._what, describe(error))

    def connected(self) -> None:
        if self._since is not None:
            logger.info("%s reached the broker again after %.0f s", self._what, time.monotonic() - self._since)
        self._since = None


def describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if refused(error):
        return f"check the user, password and permissions in BROKER_URL ({text})"
    return text


def refused(error: BaseException) -> bool:
    """The broker turned our credentials or permissions down: no retry will help until they change."""
    return REFUSED.search(f"{type(error).__name__} {error}".lower()) is not None


def refill_size(capacity: int) -> int:
    """Fetch once this many can be taken: a fetch per message, once the consumer is full, costs more than the wait."""
    return max(1, capacity // 4)


def log_stopped(finished: int, unstarted: int, interrupted: int) -> None:
    """The consumer's last line, in the same words for every broker and style."""
    logger.info(
        "consumer stopped: %d message(s) finished while draining, %d returned unstarted, %d interrupted",
        finished,
        unstarted,
        interrupted,
    )
