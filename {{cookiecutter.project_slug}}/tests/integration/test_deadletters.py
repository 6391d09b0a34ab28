"""`python -m {{ cookiecutter.project_slug }}.deadletters` against the real broker: it counts and
lists what the service dead-lettered, replays chosen ones (processed again, their retries reset)
and purges others, refuses what it cannot do with a clear error, changing nothing, and a replay
killed halfway loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from importlib.metadata import entry_points
from typing import Any

import pytest

from {{ cookiecutter.project_slug }}.deadletters import main
from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.tasks import TaskRegistry

from ..helpers import Recorder
from .helpers import eventually, post, running, via, wait_ready
from .probes import Probe
from .tally import tally
from .tcp_proxy import TcpProxy

TOOL = "{{ cookiecutter.project_slug }}.deadletters"


def tool(settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The tool's exit code, standard output and standard error, run in this process."""
    capsys.readouterr()
    code = main(list(argv), settings)
    out, err = capsys.readouterr()
    return code, out.strip(), err.strip()


def listed(settings: Settings, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    code, out, _ = tool(settings, capsys, "list", "--limit", "0", "--json")
    assert code == 0
    return [json.loads(line) for line in out.splitlines()]


def test_dead_letters_are_listed_replayed_and_purged(
    settings: Settings, registry: TaskRegistry, recorder: Recorder, probe: Probe, capsys: pytest.CaptureFixture[str]
) -> None:
    with running(settings, registry) as client:
        wait_ready(client)
        rejected = post(client, "refuse")  # dead-lettered by the service, with its reason
        probe.publish(settings.queue_name, b"\xffnot json")  # ... and so is this, at once
        # Two healthy tasks, as a program that moves dead letters by hand would leave them.
        healthy = [json.dumps({"id": f"healthy-{n}", "type": "record", "payload": {}}).encode() for n in range(2)]
        probe.publish(settings.dead_letter_queue, *healthy)
        assert eventually(lambda: tool(settings, capsys, "count")[1] == "4", timeout=30)

        letters = listed(settings, capsys)
        by_type = {letter["type"]: letter for letter in letters}
        assert sorted(letter["id"] for letter in letters if letter["type"] == "record") == ["healthy-0", "healthy-1"]
        assert by_type["refuse"]["id"] == rejected
        assert "rejected: the image is gone for good" in by_type["refuse"]["reason"]
        assert by_type["refuse"]["attempts"] == 1
        assert by_type["refuse"]["when"] != "-"
        malformed = by_type["-"]  # not a task message: its id is where the broker keeps it
        assert "not a task message" in malformed["reason"]
        code, table, _ = tool(settings, capsys, "list")
        assert code == 0
        assert table.splitlines()[0].split() == ["id", "type", "attempts", "when", "reason"]
        assert rejected in table

        # Refused, and nothing changed: an unknown id, a purge without --yes, neither --id nor --all.
        code, _, err = tool(settings, capsys, "replay", "--id", "no-such-id", "--id", "healthy-0")
        assert (code, "no dead letter with id no-such-id" in err) == (1, True)
        code, _, err = tool(settings, capsys, "purge", "--all")
        assert (code, "--yes" in err) == (1, True)
        code, _, err = tool(settings, capsys, "replay")
        assert (code, "--id ID" in err) == (1, True)
        assert tool(settings, capsys, "count")[1] == "4"
        assert recorder.started == [rejected]

        code, out, err = tool(settings, capsys, "replay", "--id", "healthy-0")
        assert (code, out) == (0, f"replayed 1 dead letter(s) from {settings.dead_letter_queue!r}"), err
        assert recorder.wait_finished(1)
        assert recorder.finished == ["healthy-0"]
        code, out, err = tool(settings, capsys, "purge", "--id", malformed["id"], "--yes")
        assert (code, out) == (0, f"purged 1 dead letter(s) from {settings.dead_letter_queue!r}"), err
        assert sorted(letter["id"] for letter in listed(settings, capsys)) == sorted([rejected, "healthy-1"])

        assert tool(settings, capsys, "replay", "--all")[0] == 0
        assert recorder.wait_finished(2)
        assert sorted(recorder.finished) == ["healthy-0", "healthy-1"]
        # The rejected one is rejected again, once: its retries were reset, none counted from before.
        assert eventually(lambda: [letter["id"] for letter in listed(settings, capsys)] == [rejected], timeout=30)
        assert recorder.started.count(rejected) == 2

        assert tool(settings, capsys, "purge", "--all", "--yes")[0] == 0
        assert tool(settings, capsys, "count")[1] == "0"
        assert tool(settings, capsys, "list")[1] == f"no dead letters in {settings.dead_letter_queue!r}"
        code, _, err = tool(settings, capsys, "replay", "--all")
        assert (code, "nothing to replay" in err) == (1, True)


def test_a_replay_killed_halfway_loses_nothing_and_repeats_at_most_one(
    settings: Settings, registry: TaskRegistry, probe: Probe, capsys: pytest.CaptureFixture[str]
) -> None:
    with running(settings, registry) as client:
        wait_ready(client)  # the service declared what it consumes from; it stops before the replay
    sent = [f"replayed-{n}" for n in range(3000)]
    bodies = [json.dumps({"id": task_id, "type": "record", "payload": {}}).encode() for task_id in sent]
    probe.publish(settings.dead_letter_queue, *bodies)
    assert eventually(lambda: tool(settings, capsys, "count")[1] == str(len(sent)), timeout=30)
    env = {**os.environ, "BROKER_URL": settings.broker_url, "QUEUE_NAME": settings.queue_name}
    replay = subprocess.Popen(
        [sys.executable, "-m", TOOL, "replay", "--all"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert replay.stderr is not None
        assert "so far" in replay.stderr.readline()  # its first line of progress: hundreds replayed
    finally:
        replay.kill()
        replay.wait(timeout=30)
    assert replay.returncode == -signal.SIGKILL, "the replay ended before it could be killed"
    left = int(tool(settings, capsys, "count")[1])
    assert 0 < left < len(sent)
    assert tool(settings, capsys, "replay", "--all")[0] == 0
    assert tool(settings, capsys, "count")[1] == "0"
    queued = probe.count(settings.queue_name)
    back = [json.loads(message.body)["id"] for message in probe.take(settings.queue_name, queued, timeout=30)]
    assert len(back) == queued
    result = tally("11 dead-letter replay SIGKILLed", sent, back)
    assert (result.lost, result.duplicates <= 1) == (0, True), result


def test_a_broker_that_is_down_is_said_in_one_line(proxy: TcpProxy, settings: Settings) -> None:
    down = settings.model_copy(update={"broker_url": via(proxy, settings.broker_url)})
    env = {**os.environ, "BROKER_URL": down.broker_url, "QUEUE_NAME": down.queue_name}
    tool = subprocess.run([sys.executable, "-m", TOOL, "count"], env=env, capture_output=True, text=True, timeout=60)
    assert tool.returncode == 1
    assert tool.stdout == ""
    assert tool.stderr.startswith("deadletters: "), tool.stderr
    assert tool.stderr.count("\n") == 1, tool.stderr


def test_the_tool_is_also_a_console_script() -> None:
    scripts = {script.name: script.value for script in entry_points(group="console_scripts")}
    assert scripts.get("{{ cookiecutter.project_slug | replace('_', '-') }}-deadletters") == f"{TOOL}:console"
