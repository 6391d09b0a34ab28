"""From the processor's verdicts to the broker's actions, once for every broker and style: what
to acknowledge, what to retry, what to dead-letter. Transports carry the actions out."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .brokers.base import Delivery
from .processing import Outcome, Verdict


@dataclass
class Settlement:
    """What to do with finished deliveries. Retries and dead letters go first: each is confirmed
    by the broker before its original is settled, and an acknowledgement can then never pass a
    message that failed before it."""

    retries: list[tuple[Delivery, float]] = field(default_factory=list)  # with the seconds to wait
    dead_letters: list[tuple[Delivery, str]] = field(default_factory=list)
    acks: list[Delivery] = field(default_factory=list)


def settlement(finished: Iterable[tuple[Delivery, Verdict]]) -> Settlement:
    plan = Settlement()
    for delivery, verdict in finished:
        if verdict.outcome is Outcome.RETRIED:
            plan.retries.append((delivery, verdict.delay_seconds))
        elif verdict.outcome is Outcome.DEAD_LETTERED:
            plan.dead_letters.append((delivery, verdict.reason))
        else:
            plan.acks.append(delivery)
    return plan
