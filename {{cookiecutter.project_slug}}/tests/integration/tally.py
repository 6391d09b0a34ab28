"""What each fault scenario sent, processed, processed twice and lost, by message id: the evidence
behind "at least once, nothing lost", printed as a table at the end of the test run. The classes are
Jepsen's: a task answered 202 and never run is lost; one refused (503 or 504) and run all the same
is recovered (a client that retries duplicates it); one run that nobody sent is unexpected."""

from __future__ import annotations

{% if cookiecutter.task_store != "none" -%}
import asyncio
{% endif -%}
import json
import os
{% if cookiecutter.task_store != "none" -%}
import time
{% endif -%}
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
{%- if cookiecutter.task_store != "none" %}

from {{ cookiecutter.project_slug }}.settings import Settings
from {{ cookiecutter.project_slug }}.store.factory import make_store
{%- endif %}

# Where the template's own test suite collects every generated project's tallies (JSON lines).
REPORT_ENV = "FAULT_REPORT"


@dataclass(frozen=True)
class Tally:
    scenario: str
    sent: int
    processed: int
    duplicates: int
    lost: int
    recovered: int = 0
    unexpected: int = 0


RESULTS: list[Tally] = []


def tally(scenario: str, sent: Iterable[str], processed: Iterable[str], refused: int = 0) -> Tally:
    """Count by id: `sent` were acknowledged by the broker, `processed` lists every handler run, and
    `refused` tasks were answered 503 or 504. A refused task's id never reached the client, so a run
    of an id not sent is recovered while there are refusals to account for it, unexpected beyond."""
    sent_ids, ran = set(sent), list(processed)
    runs = Counter(task_id for task_id in ran if task_id in sent_ids)
    others = len(set(ran) - sent_ids)
    result = Tally(
        scenario=scenario,
        sent=len(sent_ids),
        processed=len(runs),
        duplicates=sum(runs.values()) - len(runs),
        lost=len(sent_ids - set(runs)),
        recovered=min(others, refused),
        unexpected=max(0, others - refused),
    )
    RESULTS.append(result)
    if path := os.environ.get(REPORT_ENV):
        with open(path, "a", encoding="utf-8") as report:
            report.write(json.dumps(asdict(result)) + "\n")
{%- if cookiecutter.task_store != "none" %}
    if not result.lost and RECORDS_OF:
        unsettled = asyncio.run(unsettled_records(RECORDS_OF[-1], sent_ids))
        assert unsettled == {}, f"{scenario}: task records that did not end succeeded or dead_lettered: {unsettled}"
{%- endif %}
    return result
{%- if cookiecutter.task_store != "none" %}


SETTLED = ("succeeded", "dead_lettered")
# The settings of the test that is running (the `settings` fixture puts them here): where its records are.
RECORDS_OF: list[Settings] = []


async def unsettled_records(settings: Settings, task_ids: Iterable[str], seconds: float = 30.0) -> dict[str, str]:
    """The status of each task whose record has not ended succeeded or dead_lettered within `seconds`
    (the last updates may still be on their way). A task another program published has no record."""
    store = make_store(settings)
    await store.start()
    try:
        deadline = time.monotonic() + seconds
        waiting = set(task_ids)
        while True:
            records = [record for task_id in sorted(waiting) if (record := await store.get(task_id)) is not None]
            unsettled: dict[str, str] = {r.id: r.status for r in records if r.status not in SETTLED}
            if not unsettled or time.monotonic() > deadline:
                return unsettled
            waiting = set(unsettled)
            await asyncio.sleep(0.2)
    finally:
        await store.close()
{%- endif %}


def merged(results: Iterable[Tally]) -> list[Tally]:
    """One row per scenario: the sums over its tests and parameters."""
    rows: dict[str, Tally] = {}
    for r in results:
        was = rows.get(r.scenario, Tally(r.scenario, 0, 0, 0, 0))
        rows[r.scenario] = Tally(r.scenario, *(getattr(was, c) + getattr(r, c) for c in COLUMNS))
    return [rows[name] for name in sorted(rows)]


COLUMNS = ("sent", "processed", "duplicates", "lost", "recovered", "unexpected")


def table(results: Iterable[Tally]) -> list[str]:
    lines = [f"{'scenario':<40}" + "".join(f" {c:>10}" for c in COLUMNS)]
    lines += [f"{r.scenario:<40}" + "".join(f" {getattr(r, c):>10}" for c in COLUMNS) for r in merged(results)]
    return lines
