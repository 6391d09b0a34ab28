"""How the template is tested: bake projects for option combinations, then check and run them."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]
DEFAULTS = json.loads((TEMPLATE / "cookiecutter.json").read_text())

# The options a user can choose today. A broker joins BROKERS when its issue lands.
BROKERS = ["rabbitmq", "redis"]
CONSUMERS = DEFAULTS["consumer"]
DOCKER = DEFAULTS["use_docker"]
CI = DEFAULTS["ci"]

BROKER_URLS = {
    "rabbitmq": os.environ.get("TEST_BROKER_URL_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/%2F"),
    "redis": os.environ.get("TEST_BROKER_URL_REDIS", "redis://127.0.0.1:6379/0"),
}
START_HINTS = {
    "rabbitmq": "start it with `rabbitmq-server -detached` (or `docker run -d -p 5672:5672 rabbitmq:3.13`)",
    "redis": 'start it with `redis-server --daemonize yes --save ""` (or `docker run -d -p 6379:6379 redis:7.4`)',
}


def all_combinations() -> list[dict[str, str]]:
    return [
        {"broker": broker, "consumer": consumer, "use_docker": docker, "ci": ci}
        for broker, consumer, docker, ci in itertools.product(BROKERS, CONSUMERS, DOCKER, CI)
    ]


def combination_id(answers: dict[str, str]) -> str:
    docker = "docker" if answers["use_docker"] == "yes" else "nodocker"
    return f"{answers['broker']}-{answers['consumer']}-{docker}-ci_{answers['ci']}"


def bake(output_dir: Path, **answers: str) -> Path:
    """Generate a project the way `cookiecutter --no-input` does, hooks included."""
    project = cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(output_dir), extra_context=answers)
    return Path(project)


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run a command; fail the test with its output when it fails."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        pytest.fail(
            f"`{' '.join(command)}` exited {result.returncode} in {cwd}\n{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    return result.stdout + result.stderr


def project_env(project: Path, **extra: str) -> dict[str, str]:
    """This interpreter's environment with the baked project's src/ importable."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("BROKER_", "QUEUE_"))}
    env["PYTHONPATH"] = str(project / "src")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return {**env, **extra}


def python_tool(name: str) -> list[str]:
    return [sys.executable, "-m", name]


def require_broker(broker: str) -> str:
    """The broker's URL; fails loudly, with how to start it, when nothing listens there."""
    url = BROKER_URLS[broker]
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=3):
            pass
    except OSError as error:
        pytest.fail(f"{broker} is not reachable at {parts.hostname}:{parts.port} ({error}): {START_HINTS[broker]}")
    return url


@pytest.fixture(scope="session")
def baked() -> dict[str, Path]:
    """A cache of baked projects by combination id, shared by the tests of one session (or xdist worker)."""
    return {}


def bake_cached(cache: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, answers: dict[str, str]) -> Path:
    key = combination_id(answers)
    if key not in cache:
        cache[key] = bake(tmp_path_factory.mktemp(key), **answers)
    return cache[key]
