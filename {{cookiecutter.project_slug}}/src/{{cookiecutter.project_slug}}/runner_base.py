"""What the runner of either consumer style says, in the same words for every broker."""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)

OUTAGE_LOG_SECONDS = 60.0  # how often a lasting outage is logged again


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
            logger.warning("%s lost the broker: %s%s", self._what, describe(error), lasting)
            self._logged = now
            self._since = self._since or now
        else:
            logger.debug("%s still cannot reach the broker: %s", self._what, describe(error))

    def connected(self) -> None:
        if self._since is not None:
            logger.info("%s reached the broker again after %.0f s", self._what, time.monotonic() - self._since)
        self._since = None


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def log_stopped(finished: int, unstarted: int, interrupted: int) -> None:
    """The consumer's last line, in the same words for every broker and style."""
    logger.info(
        "consumer stopped: %d message(s) finished while draining, %d returned unstarted, %d interrupted",
        finished,
        unstarted,
        interrupted,
    )
