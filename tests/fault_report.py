"""The fault-injection table across every broker and consumer style: each generated project's suite
appends its tallies (its tests/integration/tally.py) to a JSON-lines file here; the table is printed at
the end of the template's run."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

# Set once, in the process that starts the run, so that pytest-xdist's workers inherit the same directory.
REPORTS = Path(os.environ.setdefault("TEMPLATE_FAULT_REPORTS", tempfile.mkdtemp(prefix="fault-reports-")))
COLUMNS = ("sent", "processed", "duplicates", "lost", "recovered", "unexpected")


def report_path(broker: str, consumer: str, store: str = "none") -> Path:
    name = f"{broker}-{consumer}" if store == "none" else f"{broker}-{consumer}-{store}"
    path = REPORTS / f"{name}.jsonl"
    path.unlink(missing_ok=True)
    return path


def read(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def totals() -> dict[tuple[str, str], dict[str, int]]:
    """Sums per (scenario, broker-style) over every report written in this run."""
    rows: dict[tuple[str, str], dict[str, int]] = {}
    for path in sorted(REPORTS.glob("*.jsonl")):
        for tally in read(path):
            row = rows.setdefault((str(tally["scenario"]), path.stem), dict.fromkeys(COLUMNS, 0))
            for column in COLUMNS:
                row[column] += int(str(tally.get(column, 0)))
    return rows


def table() -> list[str]:
    rows = totals()
    if not rows:
        return []
    lines = [f"{'scenario':<40} {'broker-style[-store]':<28}" + "".join(f"{c:>11}" for c in COLUMNS)]
    for (scenario, style), row in sorted(rows.items()):
        lines.append(f"{scenario:<40} {style:<28}" + "".join(f"{row[c]:>11}" for c in COLUMNS))
    return lines
