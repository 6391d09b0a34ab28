"""Which delivery tags to acknowledge, and how: one `basic_ack(multiple=True)` for the unbroken run
of handled tags, instead of a round of the client's writes for each tag. A handled tag above a
message still in hand waits for the run to reach it, ACK_HOLD_SECONDS at most, then goes alone:
so a crash repeats no more than what was handled in the last batch or the last 10 ms."""

from __future__ import annotations

from collections.abc import Iterable

ACK_HOLD_SECONDS = 0.01


class AckWindow:
    """The delivery tags of one channel, from delivery to acknowledgement."""

    def __init__(self) -> None:
        self._unsettled: set[int] = set()  # delivered, neither handled nor settled: a multiple ack must stop below
        self._handled: list[int] = []  # handled, not yet acknowledged
        self._held_since = 0.0  # when the oldest of `_handled` was handled

    def clear(self) -> None:
        """A new channel: its tags start again from 1."""
        self._unsettled.clear()
        self._handled.clear()

    def delivered(self, tag: int) -> None:
        self._unsettled.add(tag)

    def settled(self, tag: int) -> None:
        """Acknowledged on its own (after its retry or dead letter was confirmed)."""
        self._unsettled.discard(tag)

    def handled(self, tags: Iterable[int], now: float) -> None:
        if not self._handled:
            self._held_since = now
        for tag in tags:
            self._unsettled.discard(tag)
            self._handled.append(tag)

    def due(self, now: float, everything: bool = False) -> tuple[int | None, list[int]]:
        """What to acknowledge now: the tag to ack with multiple=True (None: none), and the tags to
        ack one by one (held too long, or `everything`)."""
        if not self._handled:
            return None, []
        floor = min(self._unsettled, default=None)
        if floor is None:
            up_to, self._handled = max(self._handled), []
            return up_to, []
        below = [tag for tag in self._handled if tag < floor]
        above = [tag for tag in self._handled if tag > floor]
        alone: list[int] = []
        if above and (everything or now - self._held_since >= ACK_HOLD_SECONDS):
            alone, above = above, []
        self._handled = above  # what stays held keeps the oldest time: it goes no later than that allows
        return (max(below) if below else None), alone
