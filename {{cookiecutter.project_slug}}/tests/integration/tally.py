"""What each fault scenario sent, processed, processed twice and lost, by message id: the evidence
behind "at least once, nothing lost", printed as a table at the end of the test run."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass

# Where the template's own test suite collects every generated project's tallies (JSON lines).
REPORT_ENV = "FAULT_REPORT"


@dataclass(frozen=True)
class Tally:
    scenario: str
    sent: int
    processed: int
    duplicates: int
    lost: int


RESULTS: list[Tally] = []


def tally(scenario: str, sent: Iterable[str], processed: Iterable[str]) -> Tally:
    """Count by id: `sent` were acknowledged by the broker, `processed` lists every handler run."""
    sent_ids = set(sent)
    runs = Counter(task_id for task_id in processed if task_id in sent_ids)
    result = Tally(
        scenario=scenario,
        sent=len(sent_ids),
        processed=len(runs),
        duplicates=sum(runs.values()) - len(runs),
        lost=len(sent_ids - set(runs)),
    )
    RESULTS.append(result)
    if path := os.environ.get(REPORT_ENV):
        with open(path, "a", encoding="utf-8") as report:
            report.write(json.dumps(asdict(result)) + "\n")
    return result


def merged(results: Iterable[Tally]) -> list[Tally]:
    """One row per scenario: the sums over its tests and parameters."""
    rows: dict[str, Tally] = {}
    for r in results:
        was = rows.get(r.scenario, Tally(r.scenario, 0, 0, 0, 0))
        rows[r.scenario] = Tally(
            r.scenario, was.sent + r.sent, was.processed + r.processed, was.duplicates + r.duplicates, was.lost + r.lost
        )
    return [rows[name] for name in sorted(rows)]


def table(results: Iterable[Tally]) -> list[str]:
    lines = [f"{'scenario':<40} {'sent':>6} {'processed':>9} {'duplicates':>10} {'lost':>5}"]
    lines += [f"{r.scenario:<40} {r.sent:>6} {r.processed:>9} {r.duplicates:>10} {r.lost:>5}" for r in merged(results)]
    return lines
