"""The files that ship a project, checked without a Docker engine: hadolint for the Dockerfile,
JSON schemas for compose and CI, pre-commit on a fresh checkout, and the image's own install
and start commands run outside Docker."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pika
import pytest
import redis

from .conftest import BROKERS, CONSUMERS, all_combinations, bake, bake_cached, combination_id, require_broker, run

BIN = Path(sys.executable).parent
SHIPPING = [
    pytest.param(answers, id=combination_id(answers))
    for answers in all_combinations()
    if answers["use_docker"] == "yes" or answers["ci"] != "none"
]
SCHEMAS = {
    "docker-compose.yml": "vendor.compose-spec",
    ".github/workflows/ci.yml": "vendor.github-workflows",
    ".gitlab-ci.yml": "vendor.gitlab-ci",
}


def tools_env() -> dict[str, str]:
    """The environment with this interpreter's scripts (ruff, mypy, hadolint, ...) first on PATH."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.mark.parametrize("answers", SHIPPING)
def test_dockerfile_compose_and_ci_files_validate(
    answers: dict[str, str], baked: dict[str, Path], tmp_path_factory
) -> None:
    project = bake_cached(baked, tmp_path_factory, answers)
    if answers["use_docker"] == "yes":
        run(["hadolint", "--failure-threshold", "style", "Dockerfile"], project, tools_env())
    checked = []
    for relative, schema in SCHEMAS.items():
        if (project / relative).exists():
            run(["check-jsonschema", "--builtin-schema", schema, relative], project, tools_env())
            checked.append(relative)
    assert checked, "nothing to validate"


@pytest.mark.parametrize("answers", [pytest.param(a, id=combination_id(a)) for a in all_combinations()])
def test_pre_commit_passes_on_a_fresh_checkout_without_changes(
    answers: dict[str, str], baked: dict[str, Path], tmp_path_factory
) -> None:
    project = bake_cached(baked, tmp_path_factory, answers)
    env = {
        **tools_env(),
        "PRE_COMMIT_HOME": str(project.parent / "pre-commit-home"),
        "PYTHONPATH": str(project / "src"),
    }
    run(["git", "init", "-q"], project, env)
    run(["git", "add", "-A"], project, env)
    run(["pre-commit", "run", "--all-files", "--show-diff-on-failure"], project, env)
    assert run(["git", "diff", "--name-only"], project, env).strip() == "", "pre-commit changed files"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dockerfile_json_instruction(dockerfile: str, instruction: str) -> list[str]:
    """The exec-form argument list of the last CMD or HEALTHCHECK ... CMD in a Dockerfile."""
    joined = dockerfile.replace("\\\n", " ")
    lines = [line for line in joined.splitlines() if line.startswith(instruction)]
    assert lines, f"no {instruction} in the Dockerfile"
    command: list[str] = json.loads(lines[-1][lines[-1].index("[") :])
    return command


def wait_http(url: str, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("broker", "consumer"), [pytest.param(b, c, id=f"{b}-{c}") for b in BROKERS for c in CONSUMERS]
)
def test_the_image_install_and_start_commands_work_outside_docker(tmp_path: Path, broker: str, consumer: str) -> None:
    project = bake(tmp_path, broker=broker, consumer=consumer, use_docker="yes", ci="none")
    dockerfile = (project / "Dockerfile").read_text()
    venv = tmp_path / "opt-venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    # The build stage's install, from the same files it copies.
    assert "RUN pip install --no-cache-dir ." in dockerfile
    run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-cache-dir", "."], project)

    port = free_port()
    command = [re.sub(r"^8000$", str(port), part) for part in dockerfile_json_instruction(dockerfile, "CMD")]
    healthcheck = dockerfile_json_instruction(dockerfile, "HEALTHCHECK")
    healthcheck = [part.replace(":8000/", f":{port}/") for part in healthcheck]
    env = {
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "BROKER_URL": require_broker(broker),
        "QUEUE_NAME": f"image-{consumer}-{port}",
    }
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_http(f"http://127.0.0.1:{port}/health/live") == 200
        run(healthcheck, tmp_path, env)
    finally:
        server.send_signal(signal.SIGTERM)
        _, log = server.communicate(timeout=60)
    # uvicorn re-raises the signal once it has shut down gracefully, as a well-behaved process does.
    assert server.returncode in (0, -signal.SIGTERM), log
    assert "Application shutdown complete" in log

    worker = subprocess.Popen(
        ["python", "-m", "task_service.worker"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    started = read_until(worker, "consuming", timeout=60)
    worker.send_signal(signal.SIGTERM)
    _, log = worker.communicate(timeout=60)
    assert worker.returncode == 0, started + log
    assert "worker stopped" in log
    delete_queues(broker, env["QUEUE_NAME"], env["QUEUE_NAME"] + ".dlq")


def delete_queues(broker: str, *names: str) -> None:
    """Leave the shared broker as we found it."""
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


def read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> str:
    """Read the process's stderr until a line contains `marker`; fail after `timeout` seconds."""
    assert process.stderr is not None
    seen = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stderr, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=deadline - time.monotonic()):
                break
            line = process.stderr.readline()
            if not line:
                break
            seen.append(line)
            if marker in line:
                return "".join(seen)
    pytest.fail(f"{marker!r} never appeared:\n{''.join(seen)}")
