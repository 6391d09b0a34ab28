"""The generated service's own app and POST /tasks, with the publish removed: the ceiling for
measure 3. Served by the same uvicorn command, settings and logging as `<slug>.main:app`.

    BENCH_SLUG=bench_rabbitmq_async uvicorn null_publisher_app:app --app-dir bench
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

SLUG = os.environ["BENCH_SLUG"]
main = importlib.import_module(f"{SLUG}.main")  # configures logging exactly as the service does


class NullPublisher:
    """Accepts every message at once; never connects."""

    async def start(self) -> None:
        pass

    async def publish(self, message: Any, headers: Mapping[str, str], delay_seconds: float = 0.0) -> None:
        pass

    async def ping(self) -> None:
        pass

    async def close(self) -> None:
        pass


app = importlib.import_module(f"{SLUG}.app").create_app(main.settings, publisher=NullPublisher())
