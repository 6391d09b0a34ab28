"""Bake one project per broker x consumer style from this checkout and install it into the
benchmark's environment, each under its own package name so that all six live side by side."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent

PREFETCH_COUNT = 100  # the bench's, for every broker and style (the bare loops' batch too)
URLS = {
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/%2F",
    "redis": "redis://127.0.0.1:6379/0",
}


@dataclass(frozen=True)
class Combo:
    broker: str
    consumer: str

    @property
    def name(self) -> str:
        return f"{self.broker}-{self.consumer}"

    @property
    def slug(self) -> str:
        return f"bench_{self.broker}_{self.consumer}"


def bake_and_install(combos: list[Combo], work: Path) -> None:
    """Fresh bakes into `work` every run, the figures must describe the template as it is now;
    installed as copies (not editable), so `work` may go once they are in."""
    projects = []
    for combo in combos:
        target = work / combo.slug
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run(
            [
                str(Path(sys.executable).parent / "cookiecutter"),
                str(TEMPLATE),
                "--no-input",
                "--overwrite-if-exists",
                "-o",
                str(work),
                f"project_slug={combo.slug}",
                f"broker={combo.broker}",
                f"consumer={combo.consumer}",
                "use_docker=no",
                "ci=none",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        projects.append(str(target))
    # --no-deps: their dependencies are bench/requirements.txt's; one pip call for all of them.
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--force-reinstall"]
    subprocess.run([*pip, *projects], check=True)


def service_env(combo: Combo, queue: str, kafka: str | None, **extra: str) -> dict[str, str]:
    """The environment of one generated process, as its .env.example documents it."""
    env = {
        "BROKER_URL": f"kafka://{kafka}" if combo.broker == "kafka" else URLS[combo.broker],
        "QUEUE_NAME": queue,
        "LOG_LEVEL": "INFO",
        "METRICS_PORT": "0",
        "PREFETCH_COUNT": str(PREFETCH_COUNT),
    }
    if combo.broker == "kafka":
        env["SESSION_TIMEOUT_SECONDS"] = "3"  # tansu answers a group join after half of it
        if combo.consumer == "async":
            env["PRODUCER_IDEMPOTENCE"] = "false"  # aiokafka's idempotent producer can't start on tansu
    env.update(extra)
    return env
