"""Look at the dead letters and put them back, without the broker's own tools:
`python -m {{ cookiecutter.project_slug }}.deadletters count | list | replay | purge` (or `{{ cookiecutter.project_slug | replace('_', '-') }}-deadletters`)."""

from __future__ import annotations

import argparse
{%- if cookiecutter.consumer == "async" %}
import asyncio
{%- endif %}
import json
import sys
{%- if cookiecutter.consumer == "async" %}
from collections.abc import Callable, Coroutine, Sequence
{%- else %}
from collections.abc import Callable, Sequence
{%- endif %}
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from .brokers.base import BrokerUnavailable
from .logs import configure_logging
from .messages import InvalidMessage, decode
from .settings import Settings, get_settings

REASON_WIDTH = 60  # characters of the reason in the table; --json has it whole
PROGRESS_EVERY = 500  # dead letters replayed or purged between two lines of progress
Progress = Callable[[int], None]  # told how many are done so far


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter as the tool shows it; `handle` is the broker's, to settle it by."""

    id: str  # the task's id, or where the broker keeps the message when it is not a task message
    type: str  # "-" for a message that is not a task message
    reason: str
    attempts: int
    when: float | None  # Unix time it was dead-lettered, where the broker tells
    handle: Any = field(default=None, compare=False, repr=False)

    def shown(self) -> dict[str, Any]:
        """What --json prints (asdict would copy the handle, a client's object, too)."""
        return {
            "id": self.id,
            "type": self.type,
            "reason": self.reason,
            "attempts": self.attempts,
            "when": iso(self.when),
        }


def described(body: bytes, fallback_id: str, reason: str, attempts: int, when: float | None, handle: Any) -> DeadLetter:
    """A dead letter of any broker: the id and type from its body where it is a task message."""
    try:
        message = decode(body)
    except InvalidMessage:
        return DeadLetter(fallback_id, "-", reason, attempts, when, handle)
    return DeadLetter(message.id, message.type, reason, attempts, when, handle)


class DeadLetterQueue(Protocol):
    """What each broker supplies: its dead letters, read and settled over a connection of its own."""

    name: str  # the dead-letter queue, stream or topic
    errors: tuple[type[BaseException], ...]  # the broker is unreachable or refused

    def count(self) -> int: ...

    def peek(self, limit: int | None) -> list[DeadLetter]:
        """The first `limit` dead letters (None: all), left where they are."""

    def replay(self, ids: set[str] | None, progress: Progress) -> int:
        """Put back on the task queue those of `ids` (None: all), with no retries counted; each is
        removed from the dead letters only once the broker confirmed it back. Tells `progress`
        how many so far after each; returns how many."""

    def purge(self, ids: set[str] | None, progress: Progress) -> int:
        """Delete those of `ids` (None: all). Returns how many."""

    def close(self) -> None: ...
{%- if cookiecutter.consumer == "async" %}


class AsyncDeadLetterQueue(Protocol):
    """A DeadLetterQueue whose methods are coroutines: what this project's asyncio clients give."""

    name: str
    errors: tuple[type[BaseException], ...]

    async def count(self) -> int: ...

    async def peek(self, limit: int | None) -> list[DeadLetter]: ...

    async def replay(self, ids: set[str] | None, progress: Progress) -> int: ...

    async def purge(self, ids: set[str] | None, progress: Progress) -> int: ...

    async def close(self) -> None: ...


class Blocking:
    """An AsyncDeadLetterQueue, driven from the command line's one event loop, as a DeadLetterQueue."""

    def __init__(self, connect: Callable[[], Coroutine[Any, Any, AsyncDeadLetterQueue]]) -> None:
        self._runner = asyncio.Runner()
        try:
            self._queue = self._runner.run(connect())
        except BaseException:
            self._runner.close()
            raise
        self.name = self._queue.name
        self.errors = self._queue.errors

    def count(self) -> int:
        return self._runner.run(self._queue.count())

    def peek(self, limit: int | None) -> list[DeadLetter]:
        return self._runner.run(self._queue.peek(limit))

    def replay(self, ids: set[str] | None, progress: Progress) -> int:
        return self._runner.run(self._queue.replay(ids, progress))

    def purge(self, ids: set[str] | None, progress: Progress) -> int:
        return self._runner.run(self._queue.purge(ids, progress))

    def close(self) -> None:
        try:
            self._runner.run(self._queue.close())
        finally:
            self._runner.close()
{%- endif %}


class Refused(Exception):
    """Bad input: nothing was changed."""


def iso(when: float | None) -> str:
    return "-" if when is None else datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")


def parser() -> argparse.ArgumentParser:
    tool = argparse.ArgumentParser(
        prog="{{ cookiecutter.project_slug | replace('_', '-') }}-deadletters",
        description="Inspect the dead letters, put them back on the queue, or delete them.",
        epilog="The broker is the one BROKER_URL and QUEUE_NAME name, as for the service.",
    )
    commands = tool.add_subparsers(dest="command", required=True)
    commands.add_parser("count", help="how many dead letters there are")
    listing = commands.add_parser("list", help="id, type, reason, attempts and when, oldest first")
    listing.add_argument("--limit", type=int, default=20, help="at most this many (default 20; 0: all)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    for name, what in (("replay", "put back on the queue, retries reset"), ("purge", "delete for good")):
        command = commands.add_parser(name, help=what)
        command.add_argument("--id", action="append", default=[], dest="ids", help="this one (repeatable)")
        command.add_argument("--all", action="store_true", help="every dead letter")
        if name == "purge":
            command.add_argument("--yes", action="store_true", help="yes, delete them: there is no undo")
    return tool


def run(arguments: argparse.Namespace, queue: DeadLetterQueue) -> str:
    """Carry out one command; return what to print. Raises Refused for bad input, before any change."""
    if arguments.command == "count":
        return str(queue.count())
    if arguments.command == "list":
        if arguments.limit < 0:
            raise Refused("--limit must be 0 (all) or more")
        letters = queue.peek(arguments.limit or None)
        if arguments.json:
            return "\n".join(json.dumps(letter.shown()) for letter in letters)
        return table(letters) if letters else f"no dead letters in {queue.name!r}"
    ids = chosen(arguments, queue)
    if arguments.command == "replay":
        return f"replayed {queue.replay(ids, report)} dead letter(s) from {queue.name!r}"
    return f"purged {queue.purge(ids, report)} dead letter(s) from {queue.name!r}"


def report(done: int) -> None:
    """A long replay or purge says how far it got, now and then, on stderr."""
    if done % PROGRESS_EVERY == 0:
        print(f"... {done} so far", file=sys.stderr, flush=True)


def chosen(arguments: argparse.Namespace, queue: DeadLetterQueue) -> set[str] | None:
    """The ids asked for (None: all), each checked to be there; refuses a purge without --yes."""
    if bool(arguments.ids) == arguments.all:
        raise Refused(f"{arguments.command}: give --id ID (one or more) or --all")
    if arguments.command == "purge" and not arguments.yes:
        raise Refused("purge deletes dead letters for good: add --yes")
    present = {letter.id for letter in queue.peek(None)}
    if not present:
        raise Refused(f"no dead letters in {queue.name!r}: nothing to {arguments.command}")
    if arguments.all:
        return None
    unknown = sorted(set(arguments.ids) - present)
    if unknown:
        raise Refused(f"no dead letter with id {', '.join(unknown)} in {queue.name!r}; `list` shows them")
    return set(arguments.ids)


def table(letters: Sequence[DeadLetter]) -> str:
    """Aligned columns; the reason last, shortened to one line."""
    rows = [("id", "type", "attempts", "when", "reason")]
    rows += [(dead.id, dead.type, str(dead.attempts), iso(dead.when), shortened(dead.reason)) for dead in letters]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = []
    for row in rows:
        aligned = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        lines.append("  ".join([*aligned, row[4]]))
    return "\n".join(lines)


def shortened(reason: str) -> str:
    line = " ".join(reason.split())
    return line if len(line) <= REASON_WIDTH else line[: REASON_WIDTH - 3] + "..."


def main(argv: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    from .brokers.factory import open_dead_letters  # here: --help needs no broker client

    arguments = parser().parse_args(argv)
    settings = settings or get_settings()
    try:
        queue = open_dead_letters(settings)
    except BrokerUnavailable as error:
        print(f"deadletters: {error}", file=sys.stderr)
        return 1
    try:
        print(run(arguments, queue))
    except Refused as error:
        print(f"deadletters: {error}", file=sys.stderr)
        return 1
    except queue.errors as error:
        print(f"deadletters: the broker at {settings.broker_address} failed: {error!r}", file=sys.stderr)
        return 1
    finally:
        queue.close()
    return 0


def console() -> None:
    # The tool says what went wrong itself, in one line; the clients' own logging would add more.
    configure_logging("CRITICAL")
    sys.exit(main())


if __name__ == "__main__":
    console()
