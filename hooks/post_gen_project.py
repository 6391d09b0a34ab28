"""Remove every file of an option the user did not choose, then print the next steps.

Each option has a table of the paths it owns and one small function that prunes it;
`main()` reads as a decision table. Offline, deterministic and idempotent: an update
tool such as cruft may run it again over a generated project.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

CONTEXT = json.loads(r"""{{ cookiecutter | tojson }}""")

PACKAGE = "src/{slug}"

# What belongs to one broker, whatever the consumer style: its package, its test probes, its own tests.
BROKER_FILES = {
    "rabbitmq": [
        f"{PACKAGE}/brokers/rabbitmq",
        "tests/integration/probes/rabbitmq",
        "tests/integration/test_rabbitmq.py",
        "tests/integration/test_rabbitmq_faults.py",
        "tests/integration/test_rabbitmq_cluster.py",
        "tests/integration/rabbitmq_node.py",
        "tests/test_rabbitmq_acks.py",
        "tests/test_rabbitmq_waits.py",
        "tests/test_rabbitmq_settings.py",
        "tests/test_rabbitmq_blocked_*.py",
    ],
    "redis": [
        f"{PACKAGE}/brokers/redis",
        "tests/integration/probes/redis",
        "tests/integration/test_redis.py",
        "tests/integration/redis_server.py",
        "tests/integration/test_redis_faults.py",
        "tests/integration/test_redis_sentinel.py",
        "tests/test_redis_urls.py",
    ],
    "kafka": [
        f"{PACKAGE}/brokers/kafka",
        "tests/integration/probes/kafka",
        "tests/integration/test_kafka.py",
        "tests/test_kafka_offsets.py",
        "tests/test_kafka_commits_threaded.py",
        "tests/test_kafka_waits.py",
        "tests/test_kafka_publishing.py",
    ],
}

# What belongs to one consumer style, for every broker: the runner, and each broker's (and probe's)
# module of that style. Glob patterns.
STYLE_FILES = {
    style: [
        f"{PACKAGE}/runner_{module}.py",
        f"{PACKAGE}/brokers/*/{module}*.py",
        f"tests/integration/probes/*/{module}.py",
        f"tests/test_*_{module}.py",
    ]
    for style, module in (("threaded", "threaded"), ("async", "asynchronous"))
}

# What belongs to the task store: the whole package and its tests when there is none; else each
# store's own modules and tests. Glob patterns.
TASK_STORE_FILES = [
    f"{PACKAGE}/store",
    "tests/test_task_records.py",
    "tests/integration/test_task_records.py",
    "tests/integration/test_store_*.py",
    "tests/integration/stores.py",
    "tests/integration/test_task_store.py",
]
STORE_FILES = {
    store: [f"{PACKAGE}/store/{store}*.py", f"tests/integration/test_store_{store}.py"]
    for store in ("redis", "postgresql")
}

DOCKER_FILES = ["Dockerfile", ".dockerignore", "docker-compose.yml"]

KUBERNETES_FILES = ["deploy"]

CI_FILES = {
    "github": [".github"],
    "gitlab": [".gitlab-ci.yml"],
}

# How to start the broker on the machine itself (Debian or Ubuntu), for use_docker=no or no Docker
# engine: the next steps print them, and the generated README's "Run it" has the same lines.
KAFKA = "~/kafka_2.13-3.9.1"  # Apache Kafka's own distribution, unpacked in the home directory
BROKER_START = {
    "rabbitmq": [
        ("sudo apt-get install -y rabbitmq-server", "RabbitMQ, once"),
        ("sudo rabbitmq-server -detached", "the broker, unless its service already runs"),
    ],
    "redis": [
        ("sudo apt-get install -y redis-server", "Redis, once"),
        ("redis-server --daemonize yes", "the broker"),
    ],
    "kafka": [
        ("sudo apt-get install -y default-jre-headless", "Java, for Apache Kafka (once)"),
        ("curl -fsSL https://archive.apache.org/dist/kafka/3.9.1/kafka_2.13-3.9.1.tgz | tar -xz -C ~", ""),
        (
            f'{KAFKA}/bin/kafka-storage.sh format -t "$({KAFKA}/bin/kafka-storage.sh random-uuid)" '
            f"-c {KAFKA}/config/kraft/server.properties",
            "",
        ),
        (f"{KAFKA}/bin/kafka-server-start.sh -daemon {KAFKA}/config/kraft/server.properties", ""),
    ],
}
BROKER_START_MORE = {
    "kafka": "Kafka in KRaft mode, and the FAULTS listener the fault tests need: README.md, Run it",
}


def remove(root: Path, pattern: str) -> None:
    """Delete the files or folders the glob pattern matches; a second run finds nothing to do."""
    for path in root.glob(pattern.format(slug=CONTEXT["project_slug"])):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def remove_other_brokers(root: Path, broker: str) -> None:
    for name, paths in BROKER_FILES.items():
        if name != broker:
            for relative in paths:
                remove(root, relative)


def remove_other_styles(root: Path, consumer: str) -> None:
    for name, patterns in STYLE_FILES.items():
        if name != consumer:
            for pattern in patterns:
                remove(root, pattern)


def remove_task_store(root: Path) -> None:
    for pattern in TASK_STORE_FILES:
        remove(root, pattern)


def remove_other_stores(root: Path, store: str) -> None:
    for name, patterns in STORE_FILES.items():
        if name != store:
            for pattern in patterns:
                remove(root, pattern)


def remove_docker_files(root: Path) -> None:
    for relative in DOCKER_FILES:
        remove(root, relative)


def remove_kubernetes_files(root: Path) -> None:
    for relative in KUBERNETES_FILES:
        remove(root, relative)


def remove_other_ci(root: Path, ci: str) -> None:
    for name, paths in CI_FILES.items():
        if name != ci:
            for relative in paths:
                remove(root, relative)


def next_steps(context: dict[str, str]) -> str:
    slug = context["project_slug"]
    steps = [
        (f"cd {slug}", ""),
        ('python -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]"', ""),
    ]
    broker = context["broker"]
    if context["use_docker"] == "yes":
        steps.append((f"docker compose up -d {broker}", "the broker (no Docker engine: README.md, Run it)"))
    else:
        steps += BROKER_START[broker]
        if broker in BROKER_START_MORE:
            steps.append(("", BROKER_START_MORE[broker]))
    steps += [
        ("pytest", "unit and integration tests"),
        (f"uvicorn {slug}.main:app", "the API (it consumes too)"),
        (f"python -m {slug}.worker", "a consumer alone, to scale out"),
    ]
    if context["kubernetes"] == "yes":
        steps.append(("kubectl apply -k deploy/kubernetes/overlays/production", "see README: Deploy on Kubernetes"))
    width = max(len(command) for command, comment in steps if comment)
    lines = [
        f"  {command.ljust(width)}  # {comment}"
        if command and comment
        else f"  # {comment}"
        if comment
        else f"  {command}"
        for command, comment in steps
    ]
    return "\n".join([f"Created {slug}. Next:", *lines])


def main(root: Path, context: dict[str, str]) -> None:
    remove_other_brokers(root, context["broker"])
    remove_other_styles(root, context["consumer"])
    if context["task_store"] == "none":
        remove_task_store(root)
    else:
        remove_other_stores(root, context["task_store"])
    if context["use_docker"] == "no":
        remove_docker_files(root)
    if context["kubernetes"] == "no":
        remove_kubernetes_files(root)
    remove_other_ci(root, context["ci"])
    print(next_steps(context))


if __name__ == "__main__":
    main(Path.cwd(), CONTEXT)
    sys.exit(0)
