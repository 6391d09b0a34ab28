"""Whether the publisher can reach Kafka, as far as it knows. The clients hide their connections:
a publish while the brokers are away waits in the client until its deadline, and would get a 504
(outcome unknown) for a message that never left the process. Known unreachable, it is refused at
once with a 503 instead, until a probe of the brokers answers."""

from __future__ import annotations

import time

PROBE_SECONDS = 0.5  # how often an unreachable publisher asks the brokers again


class Reachability:
    """`up` once the brokers answered; down again when a publish or a ping went unanswered."""

    def __init__(self) -> None:
        self._up = False
        self._next_probe = 0.0

    @property
    def up(self) -> bool:
        return self._up

    def answered(self) -> None:
        self._up = True

    def lost(self) -> None:
        self._up = False

    def probe_due(self) -> bool:
        """True at most every PROBE_SECONDS while down: time to ask the brokers."""
        now = time.monotonic()
        if self._up or now < self._next_probe:
            return False
        self._next_probe = now + PROBE_SECONDS
        return True
