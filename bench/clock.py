"""What every measured consumer that is not the generated one reports: when it handled its first
and its last message. Rates are taken between those two moments, so start-up, connection and
group-join times never count, for the generated worker (read from its log) or anyone else."""

from __future__ import annotations

import json
import time
from pathlib import Path


class Clock:
    """Counts handled messages; on the last one, writes the result to `path` (when given)."""

    def __init__(self, total: int, path: str | None = None) -> None:
        self.total = total
        self.path = path
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    def tick(self) -> None:
        self.count += 1
        self.last = time.time()
        if self.count == 1:
            self.first = self.last
        if self.count == self.total and self.path:
            Path(self.path).write_text(self.result())

    def handle(self, body: bytes) -> None:
        json.loads(body)  # the one piece of work every consumer must do
        self.tick()

    @property
    def done(self) -> bool:
        return self.count >= self.total

    def result(self) -> str:
        return json.dumps({"first": self.first, "last": self.last, "count": self.count})
