"""Unit tests of the dead-letter tool's command line, with a dead-letter queue in memory; the
integration tests run it against the real broker."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from {{ cookiecutter.project_slug }}.deadletters import DeadLetter, Refused, main, parser, run, shortened, table
from {{ cookiecutter.project_slug }}.settings import Settings


class Queue:
    """A DeadLetterQueue in memory that records what it was asked to do."""

    name = "tasks.dlq"
    errors: tuple[type[BaseException], ...] = ()

    def __init__(self, *letters: DeadLetter) -> None:
        self.letters = list(letters)
        self.replayed: list[set[str] | None] = []

    def count(self) -> int:
        return len(self.letters)

    def peek(self, limit: int | None) -> list[DeadLetter]:
        return self.letters[:limit]

    def replay(self, ids: set[str] | None, progress: Callable[[int], None]) -> int:
        self.replayed.append(ids)
        done = len(self.letters) if ids is None else len(ids)
        for so_far in range(1, done + 1):
            progress(so_far)
        return done

    def purge(self, ids: set[str] | None, progress: Callable[[int], None]) -> int:
        return self.replay(ids, progress)

    def close(self) -> None:
        """Nothing to close."""


A = DeadLetter("a", "record", "failed after 3 retries: boom", 4, 1_700_000_000.0)
B = DeadLetter("1-7", "-", "not a task message: body: Invalid JSON", 1, None)


def test_list_shows_id_type_attempts_when_and_reason_as_a_table_or_json() -> None:
    queue = Queue(A, B)
    lines = run(parser().parse_args(["list"]), queue).splitlines()
    assert lines[0].split() == ["id", "type", "attempts", "when", "reason"]
    assert lines[1].split()[:4] == ["a", "record", "4", "2023-11-14T22:13:20+00:00"]
    assert lines[2].split()[:4] == ["1-7", "-", "1", "-"]
    shown = [json.loads(line) for line in run(parser().parse_args(["list", "--json"]), queue).splitlines()]
    assert shown[0] == {
        "id": "a",
        "type": "record",
        "reason": "failed after 3 retries: boom",
        "attempts": 4,
        "when": "2023-11-14T22:13:20+00:00",
    }
    assert run(parser().parse_args(["list", "--limit", "1"]), queue).count("\n") == 1


def test_a_long_reason_is_shortened_to_one_line_in_the_table_only() -> None:
    long = DeadLetter("a", "record", "line one\nline two " + "x" * 200, 1, None)
    assert "\n" not in shortened(long.reason)
    assert len(shortened(long.reason)) == 60
    assert table([long]).count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        pytest.param(["replay"], "--id ID", id="neither-id-nor-all"),
        pytest.param(["replay", "--all", "--id", "a"], "--id ID", id="both"),
        pytest.param(["replay", "--id", "zz"], "no dead letter with id zz", id="unknown-id"),
        pytest.param(["purge", "--all"], "--yes", id="purge-without-yes"),
        pytest.param(["list", "--limit", "-1"], "--limit", id="negative-limit"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(argv: list[str], says: str) -> None:
    queue = Queue(A, B)
    with pytest.raises(Refused, match=says):
        run(parser().parse_args(argv), queue)
    assert queue.replayed == []


def test_an_empty_dead_letter_queue_is_said_and_nothing_to_replay_is_an_error() -> None:
    assert run(parser().parse_args(["count"]), Queue()) == "0"
    assert run(parser().parse_args(["list"]), Queue()) == "no dead letters in 'tasks.dlq'"
    with pytest.raises(Refused, match="nothing to replay"):
        run(parser().parse_args(["replay", "--all"]), Queue())


def test_replay_and_purge_pass_the_chosen_ids_or_all() -> None:
    queue = Queue(A, B)
    assert run(parser().parse_args(["replay", "--id", "a"]), queue) == "replayed 1 dead letter(s) from 'tasks.dlq'"
    assert run(parser().parse_args(["purge", "--all", "--yes"]), queue) == "purged 2 dead letter(s) from 'tasks.dlq'"
    assert queue.replayed == [{"a"}, None]


def test_a_long_replay_says_how_far_it_got_now_and_then(capsys: pytest.CaptureFixture[str]) -> None:
    queue = Queue(*(DeadLetter(f"t-{n}", "record", "", 1, None) for n in range(1200)))
    run(parser().parse_args(["replay", "--all"]), queue)
    assert capsys.readouterr().err.splitlines() == ["... 500 so far", "... 1000 so far"]


def test_an_in_memory_broker_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["count"], Settings(broker_url="memory://")) == 1
    err = capsys.readouterr().err
    assert err.startswith("deadletters: BROKER_URL=memory://")
    assert err.count("\n") == 1
